# W1: COPY of the ~200 MB context (an extension shipping what its generate step prepared).
ARG base_image
FROM ${base_image}
COPY . /opt/ext/
