# dlwt: the reproduction pipeline in one CUDA-capable image.
#   docker build -t dlwt:latest .
#   docker run --rm --gpus all --ipc=host -v <imagenet>:/work/data/raw/imagenet -v "$PWD/results:/work/results" dlwt:latest
#   apptainer build dlwt.sif docker-daemon://dlwt:latest      (for SLURM: snakemake --profile profiles/slurm)
#
# CUDA comes from pip, not from the base image: the pinned torch 2.14.1 wheel on PyPI is the CUDA 13 build and
# brings the CUDA runtime, cuDNN and NCCL as nvidia-* wheels (pinned in constraints.txt); the host only needs an
# NVIDIA driver recent enough for CUDA 13 and the NVIDIA container toolkit (`--gpus`) or Apptainer's `--nv`.
# Python must be 3.11: constraints.txt was frozen on 3.11.
FROM python:3.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Everything on PATH through ENV, not an ENTRYPOINT or .bashrc: Apptainer skips both.
# SNAKEMAKE_PROFILE: a bare `snakemake` in the container uses profiles/local (resources gpu=1, so train jobs
# do not pile up on one GPU); `--profile ...` on the command line replaces it, `--profile none` drops it.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    DVC_NO_ANALYTICS=1 \
    SNAKEMAKE_PROFILE=/work/profiles/local

# The same apt packages as scripts/install.sh (FFCV's setup.py needs libturbojpeg and OpenCV through pkg-config,
# and g++ for its C++ extension: the slim image has no compiler), plus git (every run records the git SHA of the
# code). tests/test_docker.py keeps this list equal to install.sh's plus git.
# Not version-pinned (DL3008): Debian bookworm replaces a package's version with each point/security release
# and drops the old one from the mirror, so pins would break the build within months; the Python side, where
# the numbers matter, is fully pinned by constraints.txt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libturbojpeg0-dev libopencv-dev g++ git \
    && rm -rf /var/lib/apt/lists/*

# A non-root user owns the work tree; the venv stays root-owned (read-only for runs, like the image under Apptainer).
# safe.directory: git refuses a repository owned by another user (Apptainer runs as the host user), and
# provenance would then record "unknown" instead of the SHA.
RUN useradd --create-home --uid 1000 --shell /bin/bash dlwt \
    && git config --system --add safe.directory /work \
    && python -m venv /opt/venv

WORKDIR /work

# Dependencies first, in their own layer, so that editing the code does not reinstall 6 GB of torch: install the
# project exactly as CI does (scripts/install.sh), against a stub package; the editable install only puts /work/src
# on sys.path, so the real source copied below is what runs. README.md is stubbed too (pyproject's `readme`).
COPY pyproject.toml constraints.txt ./
RUN mkdir -p src/dlwt && touch src/dlwt/__init__.py README.md \
    && pip install -c constraints.txt -e ".[all]" \
    && pip check

# The whole repository, .git included (see .dockerignore): dlwt writes `git rev-parse HEAD` (+dirty) into every
# config.json and checkpoint, so the image's results name the commit it was built from. Mount your own checkout
# over /work (-v "$PWD:/work") to run other code with the same environment; its SHA is recorded instead.
COPY --chown=dlwt:dlwt . .
RUN mkdir -p data/raw/imagenet results paper \
    && chown dlwt:dlwt /work data data/raw data/raw/imagenet results paper

# numeric, so that hosts and Kubernetes can check it is not root without the image's /etc/passwd (DL3066)
USER 1000:1000

# Mount ImageNet at /work/data/raw/imagenet (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
# ILSVRC2012_devkit_t12.tar.gz) and results/ (and paper/) to keep the outputs. CMD, not ENTRYPOINT: Apptainer runs it.
CMD ["snakemake", "--cores", "all"]
