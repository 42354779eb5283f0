# One image for every inferq service (api, migrate, workers, flower); docker-compose.yml picks the command.
#   docker build -t inferq:latest .
#   docker build -t inferq:latest-gpu --build-arg TENSORFLOW_VARIANT=gpu .   # CUDA-enabled TensorFlow
FROM python:3.11-slim

# cpu: the tensorflow-cpu wheel pyproject.toml pins on x86_64 (no CUDA kernels; small image).
# gpu: swaps it for tensorflow[and-cuda] of the same version, for workers pinned to an NVIDIA GPU.
ARG TENSORFLOW_VARIANT=cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INFERQ_DATA_DIR=/data

RUN groupadd --system --gid 10001 inferq \
    && useradd --system --uid 10001 --gid inferq --create-home --home-dir /home/inferq --shell /usr/sbin/nologin inferq

WORKDIR /app

# Dependencies first, in their own layer (TensorFlow is hundreds of MB): build the project with empty
# package folders so only the dependency set is resolved, then drop the placeholder distribution.
COPY pyproject.toml README.md ./
RUN mkdir -p api worker shared inferq migrations \
    && pip install --no-cache-dir . \
    && pip uninstall --yes inferq \
    && if [ "$TENSORFLOW_VARIANT" = "gpu" ]; then \
         tf_version="$(python -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null \
                       || python -c 'import importlib.metadata as m; print(m.version("tensorflow"))')" \
         && pip uninstall --yes tensorflow-cpu \
         && pip install --no-cache-dir "tensorflow[and-cuda]==${tf_version}"; \
       fi \
    && rm -rf build ./*.egg-info

# The application itself.
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY inferq ./inferq
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && mkdir -p /data \
    && chown inferq:inferq /data

# /data holds blobs and models; an empty named volume mounted there takes the inferq owner from the image.
USER inferq

EXPOSE 8000 5555

CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "api.wsgi:app"]
