# Phaseboard image for the API and the GPU workers (see docker-compose.yml).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PHASEBOARD_HOME=/data

# torch first, on its own layer: the CUDA build from PyPI (workers use the GPU); pass
# --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# for a smaller CPU-only image.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install ${TORCH_SPEC}

WORKDIR /app
COPY pyproject.toml setup.py README.md LICENSE ./
COPY server ./server
COPY analysis ./analysis
COPY migrations ./migrations
COPY frontend ./frontend
# A regular install: templates, static files and migrations travel as package data.
RUN pip install . && mkdir -p /data/blobs

EXPOSE 8765
CMD ["phaseboard", "up", "--host", "0.0.0.0", "--port", "8765"]
