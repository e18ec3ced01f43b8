# dlwt: the reproduction pipeline in one CUDA-capable image, built in two stages.
#   docker build -t dlwt:latest .
#   docker run --rm --gpus all --ipc=host -v "$PWD:/work" -v <imagenet>:/work/data/raw/imagenet:ro dlwt:latest
#   apptainer build dlwt.sif docker-daemon://dlwt:latest      (or without Docker: apptainer build --fakeroot dlwt.sif dlwt.def)
#
# CUDA comes from pip, not from the base image: the pinned torch 2.14.1 wheel on PyPI is the CUDA 13 build and
# brings the CUDA runtime, cuDNN and NCCL as nvidia-* wheels (pinned in constraints.txt); the host only needs an
# NVIDIA driver recent enough for CUDA 13 and the NVIDIA container toolkit (`--gpus`) or Apptainer's `--nv`.
# Python must be 3.11: constraints.txt was frozen on 3.11. dlwt.def is the same recipe for Apptainer (a test keeps
# their package lists equal to each other and to scripts/install.sh's).
#
# Expected size (from the installed packages; no image can be built here): about 6.6 GB, of which 6.2 GB are
# torch and its CUDA wheels, 190 MB OpenCV (pip), 130 MB the Python base and about 100 MB the runtime apt
# libraries and git. The single-stage image was about 1.6 GB larger (libopencv-dev's build dependencies, g++)
# and carried pytest, ruff and hadolint (about 80 MB).

# ---- builder: compiles FFCV's C++ extension; only /opt/venv leaves this stage ---------------------------------
FROM python:3.11-slim-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# scripts/install.sh's packages: FFCV's setup.py finds libturbojpeg and OpenCV through pkg-config, g++ builds it.
# Not version-pinned (DL3008): Debian bookworm replaces a package's version with each point/security release and
# drops the old one from the mirror, so pins would break the build within months; the Python side is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libturbojpeg0-dev libopencv-dev g++ \
    && rm -rf /var/lib/apt/lists/*

# Dependencies only (what runs the pipeline: no dev extra, so no pytest, ruff or hadolint), against a stub of the
# package so that editing the code does not reinstall 6 GB of torch.
WORKDIR /build
COPY pyproject.toml constraints.txt ./
RUN python -m venv /opt/venv \
    && mkdir -p src/dlwt && touch src/dlwt/__init__.py README.md \
    && /opt/venv/bin/pip install -c constraints.txt ".[ffcv,pipeline,report]" \
    && /opt/venv/bin/pip uninstall -y dlwt \
    && /opt/venv/bin/pip check

# ---- runtime: the libraries FFCV's extension links (ldd: libturbojpeg, OpenCV core and imgproc), git, the venv --
FROM python:3.11-slim-bookworm
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Everything on PATH through ENV, not an ENTRYPOINT or .bashrc: Apptainer skips both.
# PYTHONPATH=src: a job runs with the checkout as its working directory (Snakemake binds it into the container and
# starts there), so the checkout's src/dlwt is imported ahead of the copy installed in the image: code edited on
# the cluster is the code that runs. SNAKEMAKE_PROFILE: a bare `snakemake` uses profiles/local.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=src \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    DVC_NO_ANALYTICS=1 \
    SNAKEMAKE_PROFILE=/work/profiles/local

# gcc + libc6-dev (~60 MB): train.compile: true runs Triton, which compiles its CUDA launcher with a C compiler at
# first use (triton/runtime/build.py: $CC, else gcc, else clang; the Python headers come with python:3.11-slim)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libturbojpeg0 libopencv-core406 libopencv-imgproc406 git dataset-fashion-mnist gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# A non-root user owns the work tree; the venv stays root-owned (read-only for runs, like the image under Apptainer).
# safe.directory '*': git refuses a repository owned by another user (Apptainer runs as the host user, on the
# host's checkout), and provenance would then record "unknown" instead of the SHA.
RUN useradd --create-home --uid 1000 --shell /bin/bash dlwt \
    && git config --system --add safe.directory '*'
COPY --from=builder /opt/venv /opt/venv

# The whole repository, .git included (see .dockerignore): dlwt writes `git rev-parse HEAD` (+dirty) into every
# config.json and checkpoint, so the image's results name the commit it was built from. Installed non-editably,
# so `dlwt` works from any folder; mount your checkout over /work (-v "$PWD:/work") to run its code instead.
WORKDIR /work
COPY --chown=dlwt:dlwt . .
RUN pip install --no-deps . \
    && mkdir -p data/raw/imagenet results paper logs \
    && chown dlwt:dlwt /work data data/raw data/raw/imagenet results paper logs

# numeric, so that hosts and Kubernetes can check it is not root without the image's /etc/passwd (DL3066)
USER 1000:1000

# Mount ImageNet at /work/data/raw/imagenet (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
# ILSVRC2012_devkit_t12.tar.gz), and your checkout over /work to keep results/, paper/, logs/ and .snakemake/.
# CMD, not ENTRYPOINT: Apptainer runs it.
CMD ["snakemake", "--cores", "all"]
