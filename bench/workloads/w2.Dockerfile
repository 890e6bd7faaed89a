# W2: one RUN changing ~1 MB: two files written, one appended to (copied up), one deleted.
ARG base_image
FROM ${base_image}
USER root
RUN mkdir -p /opt/w2 && seq 1 100000 > /opt/w2/numbers.txt && head -c 300000 /usr/lib/bench/libbench.so.1 > /opt/w2/blob.bin && echo 'w2=1' >> /etc/bench/app.conf && rm /usr/share/doc/bench/obsolete.txt
USER 1000:1000
