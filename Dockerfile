# Phaseboard image for the API and the GPU workers (see docker-compose.yml).

# MKL's AVX-512 kernels on AMD CPUs (server/jobs/mkl_kernels.py): the slim image below has
# no C compiler, so the small library that answers MKL's vendor check is built here.
FROM python:3.11 AS mkl-shim
COPY server/jobs/mkl_cpu_true.c /src/
RUN cc -shared -fPIC -O2 -o /src/libmkl_cpu_true.so /src/mkl_cpu_true.c

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
COPY pyproject.toml README.md LICENSE ./
COPY server ./server
COPY analysis ./analysis
COPY migrations ./migrations
COPY frontend ./frontend
# Editable: the code finds migrations/ and frontend/ beside the server package.
RUN pip install -e . && mkdir -p /data/blobs
# Where server.jobs.mkl_kernels looks: <sys.prefix>/lib/phaseboard/.
COPY --from=mkl-shim /src/libmkl_cpu_true.so /usr/local/lib/phaseboard/

EXPOSE 8765
CMD ["phaseboard", "up", "--host", "0.0.0.0", "--port", "8765"]
