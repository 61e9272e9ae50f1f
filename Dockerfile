# A small image that runs the exporter as a non-root user.
#   docker build -t braze-export .
#   docker run --rm -e BRAZE_API_KEY --user "$(id -u):$(id -g)" \
#       -v "$PWD/configs:/config:ro" -v "$PWD/exports:/data" \
#       braze-export run /config/nightly.yaml --out /data
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/braze-export/bin:$PATH

# Only for builds behind a TLS-inspecting proxy: a CA bundle path mounted into the build.
ARG PIP_CERT=""
# Object storage backends to install (extras of the package): s3, gcs, azure, comma-separated;
# empty for local directories only.
ARG EXTRAS="s3,parquet"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# A virtual environment works the same on python:*-slim and on Debian's own python3
# (which refuses system-wide pip installs); only runtime dependencies go in, with pyarrow
# (the parquet extra) so that every output format works in the image.
RUN python3 -m venv /opt/braze-export \
 && if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
 && /opt/braze-export/bin/pip install --quiet ".${EXTRAS:+[$EXTRAS]}" \
 && rm -rf /src
COPY configs /opt/braze-export/configs

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin exporter \
 && mkdir -p /data && chown exporter /data
USER exporter
WORKDIR /data
ENTRYPOINT ["braze-export"]
CMD ["--help"]
