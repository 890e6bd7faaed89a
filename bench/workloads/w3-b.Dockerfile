# W3, extension b: a RUN writing ~0.5 MB and deleting a file of the base.
ARG base_image
FROM ${base_image}
USER root
RUN mkdir -p /opt/ext-b && seq 1 50000 > /opt/ext-b/list.txt && head -c 200000 /usr/lib/bench/libbench.so.1 > /opt/ext-b/lib.bin && rm /usr/share/doc/bench/obsolete.txt
USER 1000:1000
