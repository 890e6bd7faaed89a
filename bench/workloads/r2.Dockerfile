# R2 (bench (c)): one RUN writing ~20 MB on the Debian minbase image, as a package install would:
# new files under /opt, a user added (/etc/passwd, shadow, group copied up), dpkg's database read.
ARG base_image
FROM ${base_image}
USER root
RUN mkdir -p /opt/r2 && head -c 20000000 /dev/urandom > /opt/r2/data.bin && dpkg-query -W > /opt/r2/packages.txt && useradd -m -u 1001 app && echo ok > /var/lib/r2.status
