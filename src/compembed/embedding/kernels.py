"""A compiled (C++/OpenMP) lookup+combine and fused backward+SGD for ``FusedEmbeddingCollection``.

Why a compiled kernel (measured, see docs/performance.md and the report of issue 14): in a DLRM
step with QR-mult/4 the pure-PyTorch path runs about ten ops per step over ``(B, T, D)`` tensors
(index arithmetic, gather, two strided combines, the placement copies, and backward their mirror
plus the sparse gradient and SGD's ``mul`` + ``scatter_add_``), each one a pass over memory. The
kernel does it in two passes: forward computes each slot's row from the id, gathers it and combines
in place; backward computes each table's gradient from the saved rows and, with a fused update,
adds ``-lr * g`` to the row at once (no sparse gradient, no optimizer pass). FBGEMM's split
table-batched embedding (option b of the issue) fuses the same for full tables only: it has no
combine, so QR through it would still need the ``(B, T, D)`` combine passes in PyTorch.

The C++ source is built with ``torch.utils.cpp_extension.load`` on first use into a user cache
directory (``$COMPEMBED_KERNEL_DIR``, else ``$XDG_CACHE_HOME/compembed/kernels`` or
``~/.cache/compembed/kernels``), keyed by a hash of the source and torch's version; torch's build
lock makes concurrent builds from several processes safe, and a lock here makes it thread safe.
Set ``COMPEMBED_NO_KERNEL=1`` to force the pure-PyTorch path. When the build fails (no compiler),
``kernel_unavailable()`` says why and the collection uses the pure-PyTorch path.

Every result equals the pure-PyTorch path's bit for bit (the same float operations in the same
order: ``combine``'s left-to-right products and sums, ``_combine_backward``'s products, SGD's
``g * (-lr)`` added to a row in batch order); it is compiled with ``-ffp-contract=off`` so that no
multiply-add is fused.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import torch

__all__ = ["kernel_ops", "kernel_unavailable", "KERNEL_ENV", "NO_KERNEL_ENV"]

KERNEL_ENV = "COMPEMBED_KERNEL_DIR"
NO_KERNEL_ENV = "COMPEMBED_NO_KERNEL"

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <vector>

using at::Tensor;
constexpr int64_t PREFETCH = 4;  // samples ahead (each ~T rows)

namespace {

// Per fused feature j: its slots feat_slots[feat_ptr[j] .. feat_ptr[j+1]) (its tables in order),
// its output position feat_out[j], its operation feat_op[j] (0: add, 1: mult; one table: copy).
struct Layout {
  const int64_t *ptr, *slots, *out, *op;
  int64_t features;
};

Layout layout_of(const Tensor& feat_ptr, const Tensor& feat_slots, const Tensor& feat_out, const Tensor& feat_op) {
  return Layout{feat_ptr.data_ptr<int64_t>(), feat_slots.data_ptr<int64_t>(), feat_out.data_ptr<int64_t>(),
                feat_op.data_ptr<int64_t>(), feat_out.numel()};
}

std::tuple<Tensor, Tensor, Tensor> fused_forward(
    const Tensor& ids, const Tensor& weight, const Tensor& slot_col, const Tensor& slot_stride,
    const Tensor& slot_mod, const Tensor& slot_off, const Tensor& feat_ptr, const Tensor& feat_slots,
    const Tensor& feat_out, const Tensor& feat_op, int64_t out_features) {
  TORCH_CHECK(ids.is_contiguous() && ids.scalar_type() == at::kLong && ids.dim() == 2, "ids: contiguous int64 (B, F)");
  TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == at::kFloat, "weight: contiguous float32");
  const int64_t B = ids.size(0), F = ids.size(1), T = slot_col.numel(), D = weight.size(1);
  auto out = at::empty({B, out_features, D}, weight.options());
  auto rows = at::empty({B, T}, ids.options());
  auto gathered = at::empty({B, T, D}, weight.options());
  const Layout L = layout_of(feat_ptr, feat_slots, feat_out, feat_op);
  const int64_t *x = ids.data_ptr<int64_t>(), *col = slot_col.data_ptr<int64_t>(),
                *stride = slot_stride.data_ptr<int64_t>(), *mod = slot_mod.data_ptr<int64_t>(),
                *off = slot_off.data_ptr<int64_t>();
  const float* w = weight.data_ptr<float>();
  float *o = out.data_ptr<float>(), *g = gathered.data_ptr<float>();
  int64_t* r = rows.data_ptr<int64_t>();
  // Rows are computed and prefetched PREFETCH samples ahead of their copy: the large tables'
  // rows are cache (and TLB) misses, and this overlaps them.
  at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
    auto rows_of = [&](int64_t b) {
      for (int64_t s = 0; s < T; ++s) {  // ids are >= 0 (checked by the caller): / and % are floor ops
        const int64_t row = (x[b * F + col[s]] / stride[s]) % mod[s] + off[s];
        r[b * T + s] = row;
        __builtin_prefetch(w + row * D, 0, 0);
      }
    };
    for (int64_t b = begin; b < std::min(end, begin + PREFETCH); ++b) rows_of(b);
    for (int64_t b = begin; b < end; ++b) {
      if (b + PREFETCH < end) rows_of(b + PREFETCH);
      for (int64_t s = 0; s < T; ++s) {
        const float* src = w + r[b * T + s] * D;
        float* dst = g + (b * T + s) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = src[d];
      }
      for (int64_t j = 0; j < L.features; ++j) {
        const int64_t first = L.ptr[j], k = L.ptr[j + 1] - first;
        float* dst = o + (b * out_features + L.out[j]) * D;
        const float* a0 = g + (b * T + L.slots[first]) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = a0[d];
        for (int64_t t = 1; t < k; ++t) {  // ((a0 op a1) op a2) ..., as combine()
          const float* a = g + (b * T + L.slots[first + t]) * D;
          if (L.op[j] == 1) for (int64_t d = 0; d < D; ++d) dst[d] = dst[d] * a[d];
          else for (int64_t d = 0; d < D; ++d) dst[d] = dst[d] + a[d];
        }
      }
    }
  });
  return {out, rows, gathered};
}

// The gradient of every table of feature j at sample b into grads[t * D ..] (t: the feature's
// table index), with _combine_backward's products in its order.
void feature_grads(const Layout& L, int64_t j, int64_t b, int64_t T, int64_t D, const float* up,
                   const float* g, float* grads, float* prefix) {
  const int64_t first = L.ptr[j], k = L.ptr[j + 1] - first;
  auto part = [&](int64_t t) { return g + (b * T + L.slots[first + t]) * D; };
  if (k == 1 || L.op[j] == 0) {
    for (int64_t t = 0; t < k; ++t) for (int64_t d = 0; d < D; ++d) grads[t * D + d] = up[d];
    return;
  }
  // prefix[i] = a0 * ... * ai (i < k - 1)
  for (int64_t d = 0; d < D; ++d) prefix[d] = part(0)[d];
  for (int64_t i = 1; i < k - 1; ++i) {
    const float* a = part(i);
    for (int64_t d = 0; d < D; ++d) prefix[i * D + d] = prefix[(i - 1) * D + d] * a[d];
  }
  float* cur = prefix + (k - 1) * D;  // the running upstream product
  for (int64_t d = 0; d < D; ++d) cur[d] = up[d];
  for (int64_t t = k - 1; t >= 1; --t) {
    for (int64_t d = 0; d < D; ++d) grads[t * D + d] = cur[d] * prefix[(t - 1) * D + d];
    const float* a = part(t > 1 ? t : 1);
    if (t > 1) for (int64_t d = 0; d < D; ++d) cur[d] = cur[d] * a[d];
    else for (int64_t d = 0; d < D; ++d) grads[d] = cur[d] * a[d];
  }
}

// update: W[row] += g * (-lr) per table row, in batch order (returns an empty tensor);
// else the per-slot gradients (B, T, D).
Tensor fused_backward(
    const Tensor& grad_out, const Tensor& gathered, const Tensor& rows, const Tensor& feat_ptr,
    const Tensor& feat_slots, const Tensor& feat_out, const Tensor& feat_op, Tensor weight, double lr, bool update) {
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == at::kFloat, "grad: contiguous float32");
  const int64_t B = rows.size(0), T = rows.size(1), D = gathered.size(2), out_features = grad_out.size(1);
  const Layout L = layout_of(feat_ptr, feat_slots, feat_out, feat_op);
  int64_t kmax = 1;
  for (int64_t j = 0; j < L.features; ++j) kmax = std::max(kmax, L.ptr[j + 1] - L.ptr[j]);
  const float *up = grad_out.data_ptr<float>(), *g = gathered.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  if (update) {
    TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == at::kFloat, "weight: contiguous float32");
    float* w = weight.data_ptr<float>();
    const float step = static_cast<float>(-lr);  // as torch.mul(values, -lr): a float scalar
    // Parallel over features: their tables, so their rows, are disjoint; each row's updates are
    // added in batch order, as scatter_add_ does.
    at::parallel_for(0, L.features, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> grads(kmax * D), prefix(kmax * D);
      for (int64_t j = begin; j < end; ++j) {
        const int64_t first = L.ptr[j], k = L.ptr[j + 1] - first;
        for (int64_t b = 0; b < B; ++b) {
          if (b + 16 < B)
            for (int64_t t = 0; t < k; ++t) __builtin_prefetch(w + r[(b + 16) * T + L.slots[first + t]] * D, 1, 0);
          feature_grads(L, j, b, T, D, up + (b * out_features + L.out[j]) * D, g, grads.data(), prefix.data());
          for (int64_t t = 0; t < k; ++t) {
            float* dst = w + r[b * T + L.slots[first + t]] * D;
            const float* src = grads.data() + t * D;
            for (int64_t d = 0; d < D; ++d) dst[d] = dst[d] + src[d] * step;
          }
        }
      }
    });
    return at::empty({0}, gathered.options());
  }
  auto out = at::empty({B, T, D}, gathered.options());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> grads(kmax * D), prefix(kmax * D);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = 0; j < L.features; ++j) {
        const int64_t first = L.ptr[j], k = L.ptr[j + 1] - first;
        feature_grads(L, j, b, T, D, up + (b * out_features + L.out[j]) * D, g, grads.data(), prefix.data());
        for (int64_t t = 0; t < k; ++t) {
          float* dst = o + (b * T + L.slots[first + t]) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = grads[t * D + d];
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(compembed_kernels, m) {
  m.def("fused_forward", &fused_forward);
  m.def("fused_backward", &fused_backward);
}
"""

_lock = threading.Lock()
_state: dict = {}


def _cache_dir() -> Path:
    if os.environ.get(KERNEL_ENV):
        root = Path(os.environ[KERNEL_ENV])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compembed" / "kernels"
    key = hashlib.sha256((_SOURCE + torch.__version__).encode()).hexdigest()[:16]
    return root / key


def _build() -> None:
    from torch.utils import cpp_extension

    directory = _cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "compembed_kernels.cpp"
    if not source.exists() or source.read_text() != _SOURCE:
        tmp = source.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_SOURCE)
        os.replace(tmp, source)  # atomic: another process never compiles a half-written file
    flags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    cpp_extension.load(name="compembed_kernels", sources=[str(source)], build_directory=str(directory),
                       extra_cflags=flags, extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)


def kernel_unavailable() -> str | None:
    """Why the compiled kernel cannot be used (forced off, or the build failed), or None when it can.

    The first call builds (or loads the cached build of) the extension.
    """
    if os.environ.get(NO_KERNEL_ENV, "") not in ("", "0"):
        return f"disabled by {NO_KERNEL_ENV}={os.environ[NO_KERNEL_ENV]}"
    with _lock:
        if "reason" not in _state:
            try:
                _build()
                _state["reason"] = None
            except Exception as err:  # no compiler, no ninja, a failed compile: use the PyTorch path
                lines = str(err).strip().splitlines()
                _state["reason"] = f"C++ kernel build failed ({type(err).__name__}: {lines[-1] if lines else ''})"
    return _state["reason"]


def kernel_ops():
    """``torch.ops.compembed_kernels`` (``fused_forward``, ``fused_backward``), or None if unavailable."""
    return None if kernel_unavailable() else torch.ops.compembed_kernels
