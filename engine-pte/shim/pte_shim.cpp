// See pte_shim.h. The only C++ in the engine: everything else is Rust.

#include "pte_shim.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/platform/platform.h>

#include <sys/mman.h>

// threadpool.h is not in the wheel; these are the two members of
// executorch::extension::threadpool that the shim calls (the library
// exports them with these signatures).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace et = executorch::runtime;
using executorch::extension::Module;

// The method's planned buffers (KV cache, activations) as anonymous
// mappings rather than Module's zero-filled vectors: the kernel hands out
// zero pages on first touch, so a cache sized for the export's maximum
// length costs memory only for the positions a conversation has reached.
class PlannedMemory {
 public:
  ~PlannedMemory() {
    for (auto& s : spans_) munmap(s.data(), s.size());
  }
  bool map(const et::MethodMeta& meta) {
    for (size_t i = 0; i < meta.num_memory_planned_buffers(); i++) {
      auto size = meta.memory_planned_buffer_size(i);
      if (!size.ok()) return false;
      size_t n = *size > 0 ? static_cast<size_t>(*size) : 1;
      void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return false;
      spans_.emplace_back(static_cast<uint8_t*>(p), n);
    }
    allocator_ = std::make_unique<et::HierarchicalAllocator>(
        et::Span<et::Span<uint8_t>>(spans_.data(), spans_.size()));
    return true;
  }
  et::HierarchicalAllocator* allocator() { return allocator_.get(); }

 private:
  std::vector<et::Span<uint8_t>> spans_;
  std::unique_ptr<et::HierarchicalAllocator> allocator_;
};

struct ArnyPte {
  // Declared before the module so that it outlives the method using it.
  std::unique_ptr<PlannedMemory> planned;
  std::unique_ptr<Module> module;
};

namespace {

constexpr uint32_t kShimError = 0x1000;

ArnyPteLogSink g_log_sink = nullptr;

void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* file, const char*,
              size_t line, const char* message, size_t length) {
  if (g_log_sink) g_log_sink(static_cast<char>(level), file, line, message, length);
}

void set(ArnyPteStatus* st, uint32_t code, const std::string& msg) {
  if (!st) return;
  st->code = code;
  std::snprintf(st->message, sizeof st->message, "%s", msg.c_str());
}

void ok(ArnyPteStatus* st) { set(st, 0, ""); }

bool fail(ArnyPteStatus* st, et::Error e, const std::string& what) {
  char code[32];
  std::snprintf(code, sizeof code, " (error 0x%x)", static_cast<unsigned>(e));
  set(st, static_cast<uint32_t>(e), what + code);
  return false;
}

ArnyPte* finish_open(std::unique_ptr<Module> m, const char* method, ArnyPteStatus* st) {
  // InternalConsistency runs the flatbuffer verifier: a corrupt program is
  // rejected here instead of being trusted by the loader.
  et::Error e = m->load(et::Program::Verification::InternalConsistency);
  if (e != et::Error::Ok) {
    fail(st, e, "loading the program failed");
    return nullptr;
  }
  auto names = m->method_names();
  if (!names.ok()) {
    fail(st, names.error(), "reading the method names failed");
    return nullptr;
  }
  if (names->count(method) == 0) {
    set(st, kShimError, std::string("the program has no method `") + method + "`");
    return nullptr;
  }
  auto meta = m->method_meta(method);
  if (!meta.ok()) {
    fail(st, meta.error(), std::string("no metadata for method `") + method + "`");
    return nullptr;
  }
  auto planned = std::make_unique<PlannedMemory>();
  if (!planned->map(*meta)) {
    set(st, kShimError, std::string("mapping the planned memory of `") + method + "` failed");
    return nullptr;
  }
  e = m->load_method(method, planned->allocator());
  if (e != et::Error::Ok) {
    fail(st, e, std::string("loading method `") + method + "` failed");
    return nullptr;
  }
  ok(st);
  return new ArnyPte{std::move(planned), std::move(m)};
}

// Runs `f`, turning any C++ exception into a status and `on_error`: no
// exception may cross into Rust.
template <typename T, typename F>
T guarded(ArnyPteStatus* st, T on_error, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    set(st, kShimError, std::string("C++ exception: ") + e.what());
  } catch (...) {
    set(st, kShimError, "unknown C++ exception");
  }
  return on_error;
}

bool slot_of(const et::Result<et::Tag>& tag, const et::Result<et::TensorInfo>& info,
             ArnyPteSlot* slot) {
  std::memset(slot, 0, sizeof *slot);
  if (!tag.ok()) return false;
  slot->tag = static_cast<uint32_t>(*tag);
  if (*tag != et::Tag::Tensor || !info.ok()) return true;
  slot->dtype = static_cast<int32_t>(info->scalar_type());
  auto sizes = info->sizes();
  slot->rank = static_cast<uint32_t>(sizes.size() < ARNY_PTE_MAX_RANK ? sizes.size()
                                                                      : ARNY_PTE_MAX_RANK);
  for (uint32_t i = 0; i < slot->rank; i++) slot->sizes[i] = sizes[i];
  return true;
}

}  // namespace

extern "C" {

uint32_t arny_pte_abi_version(void) { return ARNY_PTE_ABI_VERSION; }

void arny_pte_set_log_sink(ArnyPteLogSink sink) {
  g_log_sink = sink;
  et::register_pal(et::PalImpl::create(emit_log, __FILE__));
}

ArnyPte* arny_pte_open_file(const char* path, const char* method, ArnyPteStatus* st) {
  return guarded(st, static_cast<ArnyPte*>(nullptr), [&]() -> ArnyPte* {
    auto m = std::make_unique<Module>(path, Module::LoadMode::Mmap);
    return finish_open(std::move(m), method, st);
  });
}

ArnyPte* arny_pte_open_buffer(const uint8_t* data, size_t len, const char* method,
                              ArnyPteStatus* st) {
  return guarded(st, static_cast<ArnyPte*>(nullptr), [&]() -> ArnyPte* {
    auto loader = std::make_unique<executorch::extension::BufferDataLoader>(data, len);
    auto m = std::make_unique<Module>(std::move(loader));
    return finish_open(std::move(m), method, st);
  });
}

void arny_pte_close(ArnyPte* h) {
  try {
    delete h;
  } catch (...) {
  }
}

size_t arny_pte_method_names(ArnyPte* h, char* buf, size_t cap, ArnyPteStatus* st) {
  return guarded(st, static_cast<size_t>(0), [&]() -> size_t {
    auto names = h->module->method_names();
    if (!names.ok()) {
      fail(st, names.error(), "reading the method names failed");
      return 0;
    }
    std::string all;
    for (const auto& n : *names) {
      if (!all.empty()) all += '\n';
      all += n;
    }
    if (all.size() <= cap) std::memcpy(buf, all.data(), all.size());
    ok(st);
    return all.size();
  });
}

static int32_t slots(ArnyPte* h, const char* method, bool inputs, ArnyPteSlot* out,
                     uint32_t cap, ArnyPteStatus* st) {
  return guarded(st, static_cast<int32_t>(-1), [&]() -> int32_t {
    auto meta = h->module->method_meta(method);
    if (!meta.ok()) {
      fail(st, meta.error(), std::string("no metadata for method `") + method + "`");
      return -1;
    }
    size_t n = inputs ? meta->num_inputs() : meta->num_outputs();
    uint32_t written = 0;
    for (size_t i = 0; i < n && written < cap; i++, written++) {
      bool good = inputs ? slot_of(meta->input_tag(i), meta->input_tensor_meta(i), &out[i])
                         : slot_of(meta->output_tag(i), meta->output_tensor_meta(i), &out[i]);
      if (!good) {
        set(st, kShimError, "unreadable method signature");
        return -1;
      }
    }
    ok(st);
    return static_cast<int32_t>(n);
  });
}

int32_t arny_pte_inputs(ArnyPte* h, const char* method, ArnyPteSlot* out, uint32_t cap,
                        ArnyPteStatus* st) {
  return slots(h, method, true, out, cap, st);
}

int32_t arny_pte_outputs(ArnyPte* h, const char* method, ArnyPteSlot* out, uint32_t cap,
                         ArnyPteStatus* st) {
  return slots(h, method, false, out, cap, st);
}

int64_t arny_pte_constant(ArnyPte* h, const char* method, uint32_t* kind, double* num,
                          int64_t* inum, char* buf, size_t cap, ArnyPteStatus* st) {
  return guarded(st, static_cast<int64_t>(-1), [&]() -> int64_t {
    auto r = h->module->execute(method);
    if (!r.ok()) {
      fail(st, r.error(), std::string("running `") + method + "` failed");
      return -1;
    }
    if (r->empty()) {
      set(st, kShimError, std::string("`") + method + "` returned nothing");
      return -1;
    }
    const et::EValue& v = (*r)[0];
    ok(st);
    if (v.isInt()) {
      *kind = 1;
      *inum = v.toInt();
      *num = static_cast<double>(*inum);
      return 0;
    }
    if (v.isDouble()) {
      *kind = 2;
      *num = v.toDouble();
      return 0;
    }
    if (v.isBool()) {
      *kind = 3;
      *inum = v.toBool() ? 1 : 0;
      return 0;
    }
    if (v.isString()) {
      *kind = 4;
      std::string_view s = v.toString();
      if (s.size() <= cap) std::memcpy(buf, s.data(), s.size());
      return static_cast<int64_t>(s.size());
    }
    set(st, kShimError, std::string("`") + method + "` returned an unsupported value");
    return -1;
  });
}

int64_t arny_pte_run_i64(ArnyPte* h, const char* method, uint32_t n_inputs,
                         const int64_t* const* data, const int32_t* const* sizes,
                         const uint32_t* ranks, uint32_t copy, float* out, size_t cap,
                         int32_t* out_sizes, uint32_t* out_rank, ArnyPteStatus* st) {
  return guarded(st, static_cast<int64_t>(-1), [&]() -> int64_t {
    std::vector<executorch::extension::TensorPtr> keep;
    std::vector<et::EValue> inputs;
    for (uint32_t i = 0; i < n_inputs; i++) {
      std::vector<executorch::aten::SizesType> shape(sizes[i], sizes[i] + ranks[i]);
      keep.push_back(executorch::extension::from_blob(const_cast<int64_t*>(data[i]),
                                                      std::move(shape),
                                                      executorch::aten::ScalarType::Long));
      inputs.emplace_back(*keep.back());
    }
    auto r = h->module->execute(method, inputs);
    if (!r.ok()) {
      fail(st, r.error(), std::string("running `") + method + "` failed");
      return -1;
    }
    if (r->empty() || !(*r)[0].isTensor()) {
      set(st, kShimError, std::string("`") + method + "` did not return a tensor");
      return -1;
    }
    const auto& t = (*r)[0].toTensor();
    if (t.scalar_type() != executorch::aten::ScalarType::Float) {
      set(st, kShimError, std::string("`") + method + "` returned a non-float tensor");
      return -1;
    }
    uint32_t rank = static_cast<uint32_t>(t.dim());
    if (rank > ARNY_PTE_MAX_RANK) rank = ARNY_PTE_MAX_RANK;
    for (uint32_t i = 0; i < rank; i++) out_sizes[i] = static_cast<int32_t>(t.size(i));
    *out_rank = rank;
    size_t total = static_cast<size_t>(t.numel());
    size_t row = rank > 0 ? static_cast<size_t>(t.size(rank - 1)) : total;
    size_t n = copy == ARNY_PTE_COPY_ALL ? total : copy == ARNY_PTE_COPY_LAST_ROW ? row : 0;
    if (n > total) n = total;
    if (n > 0 && n <= cap) {
      std::memcpy(out, t.const_data_ptr<float>() + (total - n), n * sizeof(float));
    }
    ok(st);
    return static_cast<int64_t>(n);
  });
}

int64_t arny_pte_planned_bytes(ArnyPte* h, const char* method, ArnyPteStatus* st) {
  return guarded(st, static_cast<int64_t>(-1), [&]() -> int64_t {
    auto meta = h->module->method_meta(method);
    if (!meta.ok()) {
      fail(st, meta.error(), std::string("no metadata for method `") + method + "`");
      return -1;
    }
    int64_t total = 0;
    for (size_t i = 0; i < meta->num_memory_planned_buffers(); i++) {
      auto size = meta->memory_planned_buffer_size(i);
      if (size.ok()) total += *size;
    }
    ok(st);
    return total;
  });
}

uint32_t arny_pte_threads(void) {
  try {
    auto* pool = executorch::extension::threadpool::get_threadpool();
    return pool ? static_cast<uint32_t>(pool->get_thread_count()) : 0;
  } catch (...) {
    return 0;
  }
}

int32_t arny_pte_set_threads(uint32_t n) {
  try {
    auto* pool = executorch::extension::threadpool::get_threadpool();
    if (!pool) return -1;
    return pool->_unsafe_reset_threadpool(n) ? 0 : -1;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
