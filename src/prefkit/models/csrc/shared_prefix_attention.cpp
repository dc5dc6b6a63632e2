// prefkit_native::shared_prefix_attention -- a decode step's attention over a prompt prefix
// shared by the samples drawn from it, for float32 on the CPU
// (prefkit/models/prefix_attention.py says what it computes; this is the same sum, fused).
//
// Why C++: per layer and step the Python version is four small batched products (one GEMV per
// row and head for the rows' own slots) and a softmax -- ~10 library calls whose fixed cost is
// most of their time at decode sizes (8 prompts x 4 samples: ~0.27 ms a layer). Here it is two
// passes over the keys and values, with a library softmax in between:
//   1. scores[r, h, :] = [<q scale, K_prefix[p, hk, w]> + bias_pad[p, w] | <q scale, K_own[r, hk,
//      u]> + bias_own[u]]   (p = r / group, hk = h / (H_q / H_kv), u < view)
//   2. probs = softmax(scores) over the W + view keys (at::_softmax)
//   3. out[r, h] = sum_w probs_w V_prefix[p, hk, w] + sum_u probs_u V_own[r, hk, u]
// The query rows sharing a prompt and a key head (group x H_q / H_kv of them) take each prefix
// key and value from memory once, four rows at a time. Slots whose bias is -inf (a prompt's left
// padding, the own slots after the step) get probability exactly 0 from the softmax, so pass 3
// skips them (the same sum where the skipped values are finite, as a static cache's are).
// Float rounding differs from the library products' (another order of the same sums).
//
// Vectorization: the loops are written on GCC/clang vector types of 16 floats and compiled for
// AVX-512, AVX2 and the baseline (target_clones; the loader picks the one this CPU runs), so the
// library needs no -march flag and runs on any x86-64 Linux (target_clones needs the ELF
// loader's ifunc); elsewhere it is the baseline build.
// Threads: the prompts x key heads are split over at::parallel_for (OpenMP when built with it).

#include <ATen/core/Tensor.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "vector_clones.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <utility>

namespace {


typedef float lanes16 __attribute__((vector_size(64)));
typedef float lanes8 __attribute__((vector_size(32)));
typedef float lanes4 __attribute__((vector_size(16)));

constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kBlock = 4;  // query rows that share one pass over a prompt's keys
const float kNegInf = -std::numeric_limits<float>::infinity();

PREFKIT_INLINE lanes16 load16(const float* p) {
  lanes16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

PREFKIT_INLINE float lane_sum(lanes16 v) {
  lanes8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
             __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  lanes4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

PREFKIT_INLINE float dot(const float* a, const float* b, int64_t d) {
  lanes16 acc = {};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) acc += load16(a + i) * load16(b + i);
  float s = lane_sum(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

PREFKIT_INLINE void add_scaled(float* y, float a, const float* x, int64_t d) {
  const lanes16 av = a - lanes16{};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    lanes16 v = load16(y + i) + av * load16(x + i);
    std::memcpy(y + i, &v, sizeof(v));
  }
  for (; i < d; ++i) y[i] += a * x[i];
}

// Sizes and element strides of the (contiguous) operands.
struct Layout {
  int64_t heads, kv_heads, rep, group, width, view, dim;
  int64_t query_row, prefix_prompt, prefix_head, own_row, own_head, slots;

  int64_t rows_per_unit() const { return group * rep; }
  int64_t keys() const { return width + view; }
  // query row m of unit (p, hk): sample m / rep of prompt p, query head hk * rep + m % rep
  int64_t row(int64_t p, int64_t m) const { return p * group + m / rep; }
  int64_t head(int64_t hk, int64_t m) const { return hk * rep + m % rep; }
  int64_t item(int64_t p, int64_t hk, int64_t m) const {
    return row(p, m) * heads + head(hk, m);
  }
};

struct Operands {
  const float *query, *prefix_keys, *prefix_values, *prefix_bias, *own_keys, *own_values,
      *own_bias;
  float scale;
};

// Calls pass(p, hk, m0, n) for each block of query rows m0 .. m0 + n - 1 (n <= kBlock) of the
// units (p, hk) in [unit_begin, unit_end).
template <typename Pass>
PREFKIT_INLINE void for_each_block(const Layout& l, int64_t unit_begin, int64_t unit_end,
                                   const Pass& pass) {
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    for (int64_t m0 = 0; m0 < l.rows_per_unit(); m0 += kBlock)
      pass(unit / l.kv_heads, unit % l.kv_heads, m0, std::min(kBlock, l.rows_per_unit() - m0));
  }
}

// Pass 1 for one block: its rows' scores over the prompt's keys, then over their own.
struct Scores {
  const Layout& l;
  const Operands& o;
  float* scores;

  PREFKIT_INLINE void operator()(int64_t p, int64_t hk, int64_t m0, int64_t n) const {
    const int64_t d = l.dim;
    const float* keys = o.prefix_keys + p * l.prefix_prompt + hk * l.prefix_head;
    const float* bias = o.prefix_bias + p * l.width;
    float q[kBlock * kMaxHeadDim];
    float* out[kBlock];
    for (int64_t i = 0; i < kBlock; ++i) {  // rows past n repeat the last (not stored)
      const int64_t m = m0 + std::min(i, n - 1);
      const float* src = o.query + l.item(p, hk, m) * d;
      for (int64_t k = 0; k < d; ++k) q[i * d + k] = src[k] * o.scale;
      out[i] = scores + l.item(p, hk, m) * l.keys();
    }
    for (int64_t w = 0; w < l.width; ++w) {
      const float* key = keys + w * d;
      lanes16 acc[kBlock] = {};
      int64_t k = 0;
      for (; k + 16 <= d; k += 16) {
        const lanes16 kv = load16(key + k);
        for (int64_t i = 0; i < kBlock; ++i) acc[i] += load16(q + i * d + k) * kv;
      }
      for (int64_t i = 0; i < n; ++i) {
        float s = lane_sum(acc[i]);
        for (int64_t kk = k; kk < d; ++kk) s += q[i * d + kk] * key[kk];
        out[i][w] = s + bias[w];
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const float* own = o.own_keys + l.row(p, m0 + i) * l.own_row + hk * l.own_head;
      for (int64_t u = 0; u < l.view; ++u) {
        out[i][l.width + u] = o.own_bias[u] == kNegInf
                                  ? kNegInf
                                  : dot(q + i * d, own + u * d, d) + o.own_bias[u];
      }
    }
  }
};

// Pass 3 for one block: its rows' probabilities times the prompt's values, then their own.
struct Mix {
  const Layout& l;
  const Operands& o;
  const float* probs;
  float* out;

  PREFKIT_INLINE void operator()(int64_t p, int64_t hk, int64_t m0, int64_t n) const {
    const int64_t d = l.dim;
    const float* values = o.prefix_values + p * l.prefix_prompt + hk * l.prefix_head;
    const float* bias = o.prefix_bias + p * l.width;
    const float* a[kBlock];
    float* y[kBlock];
    for (int64_t i = 0; i < kBlock; ++i) {  // rows past n repeat the last (not stored)
      const int64_t item = l.item(p, hk, m0 + std::min(i, n - 1));
      a[i] = probs + item * l.keys();
      y[i] = out + item * d;
    }
    int64_t k = 0;
    for (; k + 16 <= d; k += 16) {
      lanes16 acc[kBlock] = {};
      for (int64_t w = 0; w < l.width; ++w) {
        if (bias[w] == kNegInf) continue;
        const lanes16 v = load16(values + w * d + k);
        for (int64_t i = 0; i < kBlock; ++i) acc[i] += a[i][w] * v;
      }
      for (int64_t i = 0; i < n; ++i) std::memcpy(y[i] + k, &acc[i], sizeof(lanes16));
    }
    for (; k < d; ++k) {
      for (int64_t i = 0; i < n; ++i) {
        float s = 0.f;
        for (int64_t w = 0; w < l.width; ++w)
          if (bias[w] != kNegInf) s += a[i][w] * values[w * d + k];
        y[i][k] = s;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const float* own = o.own_values + l.row(p, m0 + i) * l.own_row + hk * l.own_head;
      for (int64_t u = 0; u < l.view; ++u)
        if (o.own_bias[u] != kNegInf) add_scaled(y[i], a[i][l.width + u], own + u * d, d);
    }
  }
};

// The passes' loops, compiled once per instruction set (the blocks' code is inlined here).
PREFKIT_CLONES void scores_of(const Layout& l, const Operands& o, float* scores,
                              int64_t unit_begin, int64_t unit_end) {
  for_each_block(l, unit_begin, unit_end, Scores{l, o, scores});
}

PREFKIT_CLONES void mix_of(const Layout& l, const Operands& o, const float* probs, float* out,
                           int64_t unit_begin, int64_t unit_end) {
  for_each_block(l, unit_begin, unit_end, Mix{l, o, probs, out});
}

void check(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(),
              "shared_prefix_attention: ", name, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dims, "shared_prefix_attention: ", name, " must have ", dims,
              " dimensions, got ", t.dim());
}

// query [B, H_q, 1, D]; prefix_keys/values [P, H_kv, W, D]; prefix_bias [P, 1, 1, W];
// own_keys/values [B, H_kv, N, D]; own_bias [1, 1, 1, N]; B = P * group; view <= N.
// Returns [B, 1, H_q, D].
at::Tensor shared_prefix_attention(const at::Tensor& query, const at::Tensor& prefix_keys,
                                   const at::Tensor& prefix_values, const at::Tensor& prefix_bias,
                                   const at::Tensor& own_keys, const at::Tensor& own_values,
                                   const at::Tensor& own_bias, int64_t group, int64_t view,
                                   double scale) {
  const std::initializer_list<std::pair<const at::Tensor*, const char*>> operands = {
      {&query, "query"},       {&prefix_keys, "prefix_keys"}, {&prefix_values, "prefix_values"},
      {&prefix_bias, "prefix_bias"}, {&own_keys, "own_keys"},     {&own_values, "own_values"},
      {&own_bias, "own_bias"}};
  for (const auto& [t, name] : operands) check(*t, name, 4);
  const at::Tensor q = query.contiguous(), kp = prefix_keys.contiguous(),
                   vp = prefix_values.contiguous(), pb = prefix_bias.contiguous(),
                   ok = own_keys.contiguous(), ov = own_values.contiguous(),
                   ob = own_bias.contiguous();
  const int64_t b = q.size(0), prompts = kp.size(0);
  Layout l;
  l.heads = q.size(1);
  l.dim = q.size(3);
  l.kv_heads = kp.size(1);
  l.group = group;
  l.width = kp.size(2);
  l.view = view;
  l.slots = ok.size(2);
  TORCH_CHECK(q.size(2) == 1, "shared_prefix_attention: one query position per row");
  TORCH_CHECK(l.dim <= kMaxHeadDim, "shared_prefix_attention: head size ", l.dim, " > ",
              kMaxHeadDim);
  TORCH_CHECK(l.kv_heads > 0 && l.heads % l.kv_heads == 0,
              "shared_prefix_attention: query heads must be a multiple of key heads");
  TORCH_CHECK(group > 0 && b == prompts * group, "shared_prefix_attention: ", b,
              " rows are not ", prompts, " prompts x ", group);
  TORCH_CHECK(vp.sizes() == kp.sizes() && kp.size(3) == l.dim,
              "shared_prefix_attention: prefix keys/values shape mismatch");
  TORCH_CHECK(ok.sizes() == ov.sizes() && ok.size(0) == b && ok.size(1) == l.kv_heads &&
                  ok.size(3) == l.dim,
              "shared_prefix_attention: own keys/values shape mismatch");
  TORCH_CHECK(pb.numel() == prompts * l.width, "shared_prefix_attention: prefix_bias shape");
  TORCH_CHECK(view >= 0 && view <= l.slots && ob.numel() == l.slots,
              "shared_prefix_attention: view ", view, " or own_bias outside the ", l.slots,
              " own slots");
  l.rep = l.heads / l.kv_heads;
  l.query_row = l.heads * l.dim;
  l.prefix_head = l.width * l.dim;
  l.prefix_prompt = l.kv_heads * l.prefix_head;
  l.own_head = l.slots * l.dim;
  l.own_row = l.kv_heads * l.own_head;
  const Operands o{q.data_ptr<float>(),  kp.data_ptr<float>(), vp.data_ptr<float>(),
                   pb.data_ptr<float>(), ok.data_ptr<float>(), ov.data_ptr<float>(),
                   ob.data_ptr<float>(), static_cast<float>(scale)};
  const int64_t units = prompts * l.kv_heads;
  at::Tensor scores = at::empty({b * l.heads, l.keys()}, q.options());
  float* scores_data = scores.data_ptr<float>();
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    scores_of(l, o, scores_data, begin, end);
  });
  const at::Tensor probs = at::_softmax(scores, 1, false);
  at::Tensor out = at::empty({b, 1, l.heads, l.dim}, q.options());
  const float* probs_data = probs.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    mix_of(l, o, probs_data, out_data, begin, end);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prefkit_native, m) {
  m.def(
      "shared_prefix_attention(Tensor query, Tensor prefix_keys, Tensor prefix_values, "
      "Tensor prefix_bias, Tensor own_keys, Tensor own_values, Tensor own_bias, int group, "
      "int view, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(prefkit_native, CPU, m) {
  m.impl("shared_prefix_attention", shared_prefix_attention);
}
