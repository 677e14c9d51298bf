#!/usr/bin/env bash
# `mm1 train` on this node as one of NNODES nodes: torchrun with the c10d rendezvous (no etcd, no fixed ranks).
# Run the same command on every node, or let scripts/slurm-train.sbatch do it.  See docs/scale-out.md.
#
#   NNODES=4 NPROC_PER_NODE=8 MASTER_ADDR=node001 scripts/torchrun-multinode.sh recipes/mm1/3b.yaml [--set k=v ...]
#
# Environment (all optional on a single node):
#   NNODES          nodes in the job (default 1); MIN:MAX lets the job start with MIN and admit nodes up to MAX
#   NPROC_PER_NODE  processes on this node, one per GPU (default: the GPUs nvidia-smi lists, else 1)
#   MASTER_ADDR     a host every node reaches, where the rendezvous store runs (default 127.0.0.1)
#   MASTER_PORT     its port (default 29500)
#   RDZV_ID         the same id on every node of one job, different between jobs (default mm1)
#   MAX_RESTARTS    times torchrun restarts all workers after a failure (default 0); each restart resumes from the
#                   stage's latest checkpoint, resharded if the number of processes changed
#   PYTHON          the interpreter that has mm1 installed (default python)
# Everything else (NCCL_*, OMP_NUM_THREADS, HF_HOME, AWS_*) reaches the workers unchanged.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 RECIPE [mm1 train options]" >&2
  exit 2
fi
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
nproc=${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}

exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" \
  --nproc-per-node="$nproc" \
  --rdzv-backend=c10d \
  --rdzv-endpoint="${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
  --rdzv-id="${RDZV_ID:-mm1}" \
  --max-restarts="${MAX_RESTARTS:-0}" \
  -m mm1.cli train "$@"
