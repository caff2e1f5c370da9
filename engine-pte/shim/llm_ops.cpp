// The LLM operators an export with a custom KV cache and custom SDPA
// calls: `llama::update_cache.out`, `llama::custom_sdpa.out`, and for
// models with sliding-window layers (whose caches are rings)
// `llama::update_cache_with_indices.out`.
//
// Why they are here: the executorch wheel carries their kernels only in
// `libcustom_ops_aot_lib.so`, which also registers them with PyTorch and so
// needs libtorch (and, through the pybindings, the CUDA libraries) at load
// time: not something an app can ship. These are the same operators on
// ExecuTorch's own tensors, registered into the runtime's kernel registry
// when the shim is opened. Semantics follow the schemas in
// executorch/extension/llm/custom_ops/custom_ops.py:
//
//   update_cache(value [B, S, H, D], cache [B, L, H, D], start_pos)
//       cache[:, start_pos : start_pos + S] = value
//   update_cache_with_indices(value [B, S, H, D], cache [B, L, H, D],
//                             start_pos, indices [B, S])
//       cache[b, indices[b, s]] = value[b, s]   (start_pos unused)
//   custom_sdpa(q [B, S, Hq, D], k [B, L, Hkv, D], v [B, L, Hkv, D],
//               start_pos, attn_mask?, dropout_p, is_causal, scale?)
//       query row i sits at position start_pos + i; with is_causal it sees
//       keys 0 ..= start_pos + i, so attention runs over the tokens present,
//       never over the cache's unused tail.
//
// Every argument is checked; a bad one fails the run with InvalidArgument
// (a typed error in Rust) instead of asserting.

#include <algorithm>
#include <cmath>
#include <cinttypes>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

namespace arny_llm_ops {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

namespace {

bool contiguous(const Tensor& t) {
  int64_t expect = 1;
  for (int d = static_cast<int>(t.dim()) - 1; d >= 0; --d) {
    if (t.size(d) != 1 && t.strides()[d] != expect) return false;
    expect *= t.size(d);
  }
  return true;
}

// Each helper is one pass with a single accumulator chain per lane, so the
// result does not depend on how many keys a call covers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ARNY_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ARNY_CLONES
#endif

ARNY_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

ARNY_CLONES void axpy(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, Tensor& cache,
                         const int64_t start_pos, Tensor& out) {
  (void)out;  // the schema's output is a placeholder: the cache is updated in place
  ET_KERNEL_CHECK_MSG(ctx, value.dim() == 4 && cache.dim() == 4, InvalidArgument, out,
                      "update_cache: value and cache must be 4-D");
  ET_KERNEL_CHECK_MSG(ctx, value.scalar_type() == cache.scalar_type(), InvalidArgument, out,
                      "update_cache: value and cache differ in dtype");
  ET_KERNEL_CHECK_MSG(ctx,
                      value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                          value.size(3) == cache.size(3),
                      InvalidArgument, out, "update_cache: value and cache shapes disagree");
  const int64_t seq = value.size(1);
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && seq >= 0 && start_pos + seq <= cache.size(1),
                      InvalidArgument, out,
                      "update_cache: positions %" PRId64 "..%" PRId64 " outside the cache (%zd)",
                      start_pos, start_pos + seq, static_cast<ssize_t>(cache.size(1)));
  ET_KERNEL_CHECK_MSG(ctx, contiguous(value) && contiguous(cache), InvalidArgument, out,
                      "update_cache: value and cache must be contiguous");
  const size_t row = static_cast<size_t>(value.size(2) * value.size(3)) * value.element_size();
  const auto* src = static_cast<const char*>(value.const_data_ptr());
  auto* dst = static_cast<char*>(cache.mutable_data_ptr());
  const int64_t cache_len = cache.size(1);
  for (int64_t b = 0; b < value.size(0); ++b) {
    std::memcpy(dst + (b * cache_len + start_pos) * row, src + b * seq * row,
                static_cast<size_t>(seq) * row);
  }
  return out;
}

Tensor& update_cache_with_indices_out(KernelRuntimeContext& ctx, const Tensor& value,
                                      Tensor& cache, const int64_t start_pos,
                                      const Tensor& indices, Tensor& out) {
  (void)start_pos;  // the ring's slots are in `indices`
  ET_KERNEL_CHECK_MSG(ctx, value.dim() == 4 && cache.dim() == 4, InvalidArgument, out,
                      "update_cache_with_indices: value and cache must be 4-D");
  ET_KERNEL_CHECK_MSG(ctx, value.scalar_type() == cache.scalar_type(), InvalidArgument, out,
                      "update_cache_with_indices: value and cache differ in dtype");
  ET_KERNEL_CHECK_MSG(ctx,
                      value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                          value.size(3) == cache.size(3),
                      InvalidArgument, out,
                      "update_cache_with_indices: value and cache shapes disagree");
  ET_KERNEL_CHECK_MSG(ctx,
                      indices.dim() == 2 && indices.scalar_type() == ScalarType::Long &&
                          indices.size(0) == value.size(0) && indices.size(1) == value.size(1) &&
                          contiguous(indices),
                      InvalidArgument, out,
                      "update_cache_with_indices: indices must be contiguous int64 [batch, seq]");
  ET_KERNEL_CHECK_MSG(ctx, contiguous(value) && contiguous(cache), InvalidArgument, out,
                      "update_cache_with_indices: value and cache must be contiguous");
  const int64_t seq = value.size(1), cache_len = cache.size(1);
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < value.size(0) * seq; ++i) {
    ET_KERNEL_CHECK_MSG(ctx, idx[i] >= 0 && idx[i] < cache_len, InvalidArgument, out,
                        "update_cache_with_indices: slot %" PRId64 " outside the cache (%zd)",
                        idx[i], static_cast<ssize_t>(cache_len));
  }
  const size_t row = static_cast<size_t>(value.size(2) * value.size(3)) * value.element_size();
  const auto* src = static_cast<const char*>(value.const_data_ptr());
  auto* dst = static_cast<char*>(cache.mutable_data_ptr());
  for (int64_t b = 0; b < value.size(0); ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      std::memcpy(dst + (b * cache_len + idx[b * seq + s]) * row, src + (b * seq + s) * row, row);
    }
  }
  return out;
}

Tensor& custom_sdpa_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k,
                        const Tensor& v, const int64_t start_pos,
                        const std::optional<Tensor>& attn_mask, const double dropout_p,
                        const bool is_causal, std::optional<double> scale, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4, InvalidArgument, out,
                      "custom_sdpa: q, k and v must be 4-D");
  ET_KERNEL_CHECK_MSG(ctx,
                      q.scalar_type() == ScalarType::Float &&
                          k.scalar_type() == ScalarType::Float &&
                          v.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "custom_sdpa: only float32 is implemented here");
  ET_KERNEL_CHECK_MSG(ctx, dropout_p == 0.0, InvalidArgument, out,
                      "custom_sdpa: dropout is not supported at inference");
  const int64_t batch = q.size(0), seq = q.size(1), heads = q.size(2), dim = q.size(3);
  const int64_t len = k.size(1), kv_heads = k.size(2);
  ET_KERNEL_CHECK_MSG(ctx,
                      k.size(0) == batch && v.size(0) == batch && v.size(1) == len &&
                          v.size(2) == kv_heads && k.size(3) == dim && v.size(3) == dim,
                      InvalidArgument, out, "custom_sdpa: q, k and v shapes disagree");
  ET_KERNEL_CHECK_MSG(ctx, kv_heads > 0 && heads % kv_heads == 0, InvalidArgument, out,
                      "custom_sdpa: %zd query heads over %zd kv heads",
                      static_cast<ssize_t>(heads), static_cast<ssize_t>(kv_heads));
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + seq <= len, InvalidArgument, out,
                      "custom_sdpa: positions %" PRId64 "..%" PRId64 " outside the cache (%zd)",
                      start_pos, start_pos + seq, static_cast<ssize_t>(len));
  const Tensor* mask = nullptr;
  if (attn_mask.has_value() && attn_mask->numel() > 0) {
    mask = &attn_mask.value();
    ET_KERNEL_CHECK_MSG(ctx,
                        mask->dim() == 2 && mask->size(0) == seq && mask->size(1) == len &&
                            mask->scalar_type() == ScalarType::Float && contiguous(*mask),
                        InvalidArgument, out,
                        "custom_sdpa: the mask must be a contiguous float [seq, cache length]");
  }
  ET_KERNEL_CHECK_MSG(ctx, is_causal || mask != nullptr, InvalidArgument, out,
                      "custom_sdpa: neither causal nor masked would attend to the whole cache, "
                      "unused positions included");
  ET_KERNEL_CHECK_MSG(ctx, contiguous(q) && contiguous(k) && contiguous(v), InvalidArgument, out,
                      "custom_sdpa: q, k and v must be contiguous");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok,
                      InvalidArgument, out, "custom_sdpa: the output cannot take q's shape");
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float && contiguous(out),
                      InvalidArgument, out, "custom_sdpa: the output must be contiguous float32");

  const float softmax_scale =
      static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(dim)));
  const int64_t group = heads / kv_heads;
  const float* qd = q.const_data_ptr<float>();
  const float* kd = k.const_data_ptr<float>();
  const float* vd = v.const_data_ptr<float>();
  const float* md = mask ? mask->const_data_ptr<float>() : nullptr;
  float* od = out.mutable_data_ptr<float>();

  // One task per (batch, query row, head): its keys, softmax and values.
  const int64_t tasks = batch * seq * heads;
  const bool ran = executorch::extension::parallel_for(
      0, tasks, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scores(static_cast<size_t>(len));
        for (int64_t t = begin; t < end; ++t) {
          const int64_t h = t % heads;
          const int64_t i = (t / heads) % seq;
          const int64_t b = t / (heads * seq);
          const int64_t g = h / group;
          const int64_t keys = is_causal ? start_pos + i + 1 : len;
          const float* qrow = qd + ((b * seq + i) * heads + h) * dim;
          const float* mrow = md ? md + i * len : nullptr;
          float top = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < keys; ++j) {
            float s = dot(qrow, kd + ((b * len + j) * kv_heads + g) * dim, dim) * softmax_scale;
            if (mrow) s += mrow[j];
            scores[j] = s;
            top = std::max(top, s);
          }
          float* orow = od + ((b * seq + i) * heads + h) * dim;
          std::fill(orow, orow + dim, 0.f);
          if (!(top > -std::numeric_limits<float>::infinity())) continue;  // all masked
          float sum = 0.f;
          for (int64_t j = 0; j < keys; ++j) {
            scores[j] = std::exp(scores[j] - top);
            sum += scores[j];
          }
          const float inv = 1.f / sum;
          for (int64_t j = 0; j < keys; ++j) {
            axpy(orow, scores[j] * inv, vd + ((b * len + j) * kv_heads + g) * dim, dim);
          }
        }
      });
  ET_KERNEL_CHECK_MSG(ctx, ran, Internal, out, "custom_sdpa: the thread pool refused the work");
  return out;
}

}  // namespace arny_llm_ops

EXECUTORCH_LIBRARY(llama, "update_cache.out", arny_llm_ops::update_cache_out);
EXECUTORCH_LIBRARY(llama, "custom_sdpa.out", arny_llm_ops::custom_sdpa_out);
EXECUTORCH_LIBRARY(llama, "update_cache_with_indices.out",
                   arny_llm_ops::update_cache_with_indices_out);
