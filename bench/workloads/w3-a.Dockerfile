# W3, extension a: COPY of its ~20 MB extension layer.
ARG base_image
FROM ${base_image}
COPY . /opt/ext-a/
