/* A small C surface over ExecuTorch's C++ `Module` API, so that Rust calls
 * plain functions with plain types. Every function catches C++ exceptions
 * and reports failures through `ArnyPteStatus`; none aborts on bad input.
 * Strings and buffers are owned by the caller unless a function says so.
 */
#ifndef ARNY_PTE_SHIM_H
#define ARNY_PTE_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ARNY_PTE_ABI_VERSION 2
#define ARNY_PTE_MAX_RANK 8

typedef struct ArnyPte ArnyPte;

/* `code` is ExecuTorch's runtime::Error value (0 = Ok); 0x1000 marks a C++
 * exception or a shim-level check. */
typedef struct {
  uint32_t code;
  char message[512];
} ArnyPteStatus;

/* A tensor slot of a method: tag is ExecuTorch's EValue tag (Tensor = 1),
 * dtype its ScalarType (Long = 4, Float = 6); sizes are the upper bounds
 * for dynamic dimensions. */
typedef struct {
  uint32_t tag;
  int32_t dtype;
  uint32_t rank;
  int32_t sizes[ARNY_PTE_MAX_RANK];
} ArnyPteSlot;

uint32_t arny_pte_abi_version(void);

/* Routes the runtime's log lines (level 'D', 'I', 'E' or 'F') to `sink`
 * instead of stderr. Call before anything else. */
typedef void (*ArnyPteLogSink)(char level, const char* file, size_t line, const char* message,
                               size_t length);
void arny_pte_set_log_sink(ArnyPteLogSink sink);

/* Opens a program: from a file (memory-mapped) or from a caller-owned
 * buffer that must outlive the handle. Verifies the flatbuffer, then loads
 * `method` (delegates initialise here, so a broken program fails now rather
 * than at the first token). NULL on failure. */
ArnyPte* arny_pte_open_file(const char* path, const char* method, ArnyPteStatus* st);
ArnyPte* arny_pte_open_buffer(const uint8_t* data, size_t len, const char* method,
                              ArnyPteStatus* st);
void arny_pte_close(ArnyPte* h);

/* Method names, '\n'-separated, into buf; returns the length needed. */
size_t arny_pte_method_names(ArnyPte* h, char* buf, size_t cap, ArnyPteStatus* st);

/* Inputs and outputs of a method. Returns the number of slots written
 * (at most cap), or -1 on failure. */
int32_t arny_pte_inputs(ArnyPte* h, const char* method, ArnyPteSlot* out, uint32_t cap,
                        ArnyPteStatus* st);
int32_t arny_pte_outputs(ArnyPte* h, const char* method, ArnyPteSlot* out, uint32_t cap,
                         ArnyPteStatus* st);

/* Runs a method without inputs whose first output is a scalar or a string.
 * kind: 1 int, 2 double, 3 bool, 4 string (copied into buf, returns the
 * length needed; the int/double/bool value lands in *num). Returns -1 on
 * failure. */
int64_t arny_pte_constant(ArnyPte* h, const char* method, uint32_t* kind, double* num,
                          int64_t* inum, char* buf, size_t cap, ArnyPteStatus* st);

/* What arny_pte_run_i64 copies out of the output tensor. */
#define ARNY_PTE_COPY_NONE 0     /* nothing: the run only fills the cache */
#define ARNY_PTE_COPY_LAST_ROW 1 /* the last row (the last dimension) */
#define ARNY_PTE_COPY_ALL 2      /* the whole tensor */

/* Runs `method` with int64 tensor inputs; its first output must be a float
 * tensor, whose shape lands in `out_sizes`/`out_rank` and whose part
 * chosen by `copy` is copied into `out`. Returns the number of floats that
 * part holds (when it exceeds cap nothing is copied), or -1 on failure. */
int64_t arny_pte_run_i64(ArnyPte* h, const char* method, uint32_t n_inputs,
                         const int64_t* const* data, const int32_t* const* sizes,
                         const uint32_t* ranks, uint32_t copy, float* out, size_t cap,
                         int32_t* out_sizes, uint32_t* out_rank, ArnyPteStatus* st);

/* Bytes of memory-planned buffers (activations, KV cache) a method
 * allocates when loaded. -1 on failure. */
int64_t arny_pte_planned_bytes(ArnyPte* h, const char* method, ArnyPteStatus* st);

/* The process-wide compute thread pool (XNNPACK's pthreadpool). Not safe to
 * change while a method runs; the Rust layer serialises both. */
uint32_t arny_pte_threads(void);
int32_t arny_pte_set_threads(uint32_t n);

#ifdef __cplusplus
}
#endif
#endif
