/* mfglab plugin manifest: the C boundary between the engine and a plugin library.
 *
 * Every plugin library exports exactly one symbol, MFGLAB_ENTRY_SYMBOL, a function
 * returning a pointer to a static manifest. The engine reads the first three fields
 * (sdk_major, sdk_minor, struct_size) before anything else, then the LibTorch version
 * and C++ ABI tag; only when all match does it use the rest. Listing plugins reads
 * manifests only: no object and no tensor is created.
 *
 * Evolution rule: fields are only ever appended (struct_size grows, sdk_minor bumps).
 * Existing fields are never reordered, removed or given another meaning; that would
 * bump sdk_major. This header is plain C and includes no LibTorch header. */
#ifndef MFGLAB_MANIFEST_H
#define MFGLAB_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define MFGLAB_SDK_MAJOR 1
#define MFGLAB_SDK_MINOR 1
#define MFGLAB_ENTRY_SYMBOL "mfglab_plugin_entry"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mfglab_kind {
  MFGLAB_KIND_DATASET = 1,
  MFGLAB_KIND_MODEL = 2,
  MFGLAB_KIND_HAMILTONIAN = 3,
  MFGLAB_KIND_REGULARIZER = 4,
  MFGLAB_KIND_METRIC = 5
} mfglab_kind;

/* One declared parameter. All strings are owned by the plugin and live as long as the
 * library stays loaded. */
typedef struct mfglab_param {
  const char* name;
  /* "int" | "number" | "bool" | "string" | "numbers" (a number or a list of numbers)
   * | "json" (any JSON value, checked by the plugin itself) */
  const char* type;
  const char* default_json; /* JSON text of the default value */
  double min;               /* lower bound for int/number(s); NaN when unbounded */
  double max;               /* upper bound; NaN when unbounded */
  int32_t min_exclusive;    /* 1: value must be > min rather than >= min */
  int32_t max_exclusive;    /* 1: value must be < max rather than <= max */
  const char* choices;      /* for strings: '|'-separated allowed values, or NULL */
  const char* doc;          /* one sentence */
} mfglab_param;

/* Creates a plugin object. Never throws: on failure returns 0 and writes a message
 * into error (truncated to error_size). On success *out receives a pointer to a
 * mfglab::Plugin (C++ object of the manifest's kind) that the engine owns and
 * destroys through its virtual destructor.
 *   params_json: the resolved parameters (declared defaults filled in), a JSON object.
 *   context:     const mfglab::RunContext*, owned by the engine, outliving the object. */
typedef int (*mfglab_factory_fn)(const char* params_json, const void* context, void** out,
                                 char* error, size_t error_size);

typedef struct mfglab_manifest {
  uint32_t sdk_major;        /* must equal the engine's MFGLAB_SDK_MAJOR */
  uint32_t sdk_minor;        /* informational; newer minors only append fields */
  uint32_t struct_size;      /* sizeof(mfglab_manifest) as the plugin was built */
  const char* torch_version; /* LibTorch the plugin was built against, e.g. "1.13.0" */
  const char* abi_tag;       /* compiler and C++ ABI, see MFGLAB_ABI_TAG in plugin.h */
  int32_t kind;              /* mfglab_kind */
  const char* name;          /* unique across loaded plugins, [a-z0-9_]+ */
  const char* version;       /* the plugin's own version, e.g. "1.0.0" */
  const char* description;  /* one line */
  const mfglab_param* params;
  uint32_t param_count;
  /* Comma-separated capability names. For a model: the fields it provides
   * ("value,velocity,score,log_prob"). For a regularizer or metric: what it needs
   * from the model ("value", "log_prob", ...) or the experiment ("hamiltonian"). */
  const char* fields;
  mfglab_factory_fn create;
} mfglab_manifest;

typedef const mfglab_manifest* (*mfglab_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* MFGLAB_MANIFEST_H */
