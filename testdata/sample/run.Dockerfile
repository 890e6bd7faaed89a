# The bundled sample: what an extension's bin/generate would emit as run.Dockerfile, with its
# extension layer (ext-layer/) as the build context.
ARG base_image
FROM ${base_image}

ARG user_id=1000
ARG group_id=1000

COPY --chown=${user_id}:${group_id} config/ /etc/sample/
COPY bin/hello /usr/local/bin/hello
ENV SAMPLE_HOME=/etc/sample
LABEL io.buildpacks.rebasable=true
USER ${user_id}:${group_id}
