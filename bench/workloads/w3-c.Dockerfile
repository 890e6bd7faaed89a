# W3, extension c: a small RUN editing a config file of the base.
ARG base_image
FROM ${base_image}
USER root
RUN echo 'ext-c=1' >> /etc/bench/app.conf && mkdir -p /opt/ext-c && echo ready > /opt/ext-c/ready
USER 1000:1000
