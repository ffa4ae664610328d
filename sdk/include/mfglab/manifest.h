/* mfglab plugin manifest: the C boundary between the engine and a plugin library.
 *
 * Every plugin library exports exactly one symbol, MFGLAB_ENTRY_SYMBOL, a function
 * returning a pointer to a static manifest. Listing plugins reads manifests only: no
 * object and no tensor is created. This header is plain C and includes no LibTorch header.
 *
 * ---- Loading ------------------------------------------------------------------------
 * The engine opens a library with immediate binding (RTLD_NOW | RTLD_LOCAL): a library with
 * an unresolved symbol is refused at load with the loader's own message, never ended
 * mid-run by the lazy binder. While it opens the library and calls the entry function, the
 * engine points stdout (fd 1) at stderr, so that a plugin printing from a static
 * initialiser cannot corrupt `mfglab plugins --json`; plugins should not print there anyway.
 * A library whose manifest is accepted stays loaded until the process ends (libraries
 * linked to LibTorch cannot be unloaded safely), so plugin objects may outlive the
 * PluginHost that created them.
 *
 * ---- Compatibility: what is checked, in this order -------------------------------------
 *  1. sdk_major must equal the engine's MFGLAB_SDK_MAJOR.
 *  2. sdk_minor must be at most the engine's MFGLAB_SDK_MINOR. An engine of SDK 1.N loads
 *     plugins built for SDK 1.0 ... 1.N (as CLAP hosts do). A plugin built for a newer
 *     minor is refused ("built for SDK 1.3, this mfglab provides SDK 1.2"): it could read
 *     RunContext fields or rely on capabilities this engine does not have.
 *  3. struct_size must cover at least the SDK 1.0 manifest (MFGLAB_MANIFEST_SIZE_1_0). The
 *     engine reads only the first struct_size bytes; fields a plugin's SDK did not have yet
 *     take the defaults written beside them below. (A larger struct_size is fine: the
 *     engine reads the fields it knows.)
 *  4. torch_version: LibTorch major.minor must equal the engine's ("1.13.0" loads into an
 *     engine built against "1.13.1", not into one built against "2.0.0"). Tensors,
 *     generators and TensorOptions cross the boundary as C++ objects; their layout and
 *     LibTorch's exported symbols are stable within a release series, not across one.
 *     Anything after major.minor (patch, "+cpu", "a0+git...") is ignored.
 *  5. abi_tag ("gxx-abi-<__GXX_ABI_VERSION>-cxx11abi-<_GLIBCXX_USE_CXX11_ABI>", see
 *     MFGLAB_ABI_TAG in plugin.h): the C++ ABI family and the standard library's string
 *     ABI must match. Family: __GXX_ABI_VERSION / 1000, which is 1 for the Itanium C++ ABI
 *     of every GCC since 3.4 and of Clang; the version within the family (1017 for GCC 12,
 *     1018 for GCC 13) only changes the mangling of rare constructs, and nothing crosses
 *     the boundary by mangled name (objects cross through vtables; what a plugin imports
 *     from LibTorch is bound at load, where a mismatch is refused). cxx11abi: libstdc++'s
 *     dual ABI (std::string and std::vector cross in Params, LossTerm, MetricValues), so
 *     it must be equal; a plugin built against libc++ has no such macro and is refused.
 *  6. The manifest itself (checked before any of it is used, each failure one line naming
 *     the library and the field): name, version and description are non-NULL, name is
 *     [a-z0-9_]+, kind is known, create is set, params is set when param_count > 0, and
 *     each parameter has a name (unique within the plugin), a known type and a
 *     default_json that is valid JSON satisfying its own declaration (bounds with
 *     min <= max, one of the choices). fields, choices and doc may be NULL.
 *
 * ---- Evolution rules ------------------------------------------------------------------
 *  - Fields are only ever appended to mfglab_manifest and mfglab_param (struct_size and
 *    param_size grow, sdk_minor bumps), each with a documented default for older plugins.
 *    Existing fields are never reordered, removed or given another meaning; that would
 *    bump sdk_major.
 *  - The C++ interfaces of sdk.h (Plugin, Dataset, Model, ...) are vtables: adding,
 *    removing or reordering a virtual function is a major bump. Later additions come
 *    through capability ids (Plugin::capability, "mfglab.<what>/<n>"), which an older
 *    plugin simply does not offer. RunContext only grows at its end (a newer-minor engine
 *    hands older plugins a longer struct, of which they read their prefix). */
#ifndef MFGLAB_MANIFEST_H
#define MFGLAB_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define MFGLAB_SDK_MAJOR 1
/* Minor history: 1.0 first release; 1.1 RunContext::dataset; 1.2 mfglab_manifest::param_size
 * (mfglab_param may grow) and mfglab_manifest::better, older manifests accepted by prefix;
 * 1.3 conditional entries in `fields` ("value(parameterization=potential)") and the field
 * "collocation", which models of SDK >= 1.3 declare when they implement Model::collocation. */
#define MFGLAB_SDK_MINOR 3
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
 * library stays loaded. name, type and default_json must not be NULL. The manifest's
 * params array has a stride of its param_size (SDK 1.2); fields appended here in later
 * minors take defaults for plugins whose param_size does not cover them. */
typedef struct mfglab_param {
  const char* name;
  /* "int" | "number" | "bool" | "string" | "numbers" (a number or a list of numbers)
   * | "json" (any JSON value, checked by the plugin itself) */
  const char* type;
  const char* default_json; /* JSON text of the default value; must satisfy the declaration */
  double min;               /* lower bound for int/number(s); NaN when unbounded; <= max */
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
  uint32_t sdk_minor;        /* must be <= the engine's MFGLAB_SDK_MINOR */
  uint32_t struct_size;      /* sizeof(mfglab_manifest) as the plugin was built */
  const char* torch_version; /* LibTorch the plugin was built against, e.g. "1.13.0";
                              * major.minor must match the engine's */
  const char* abi_tag;       /* C++ ABI family and libstdc++ string ABI, see MFGLAB_ABI_TAG */
  int32_t kind;              /* mfglab_kind */
  const char* name;          /* unique across loaded plugins, [a-z0-9_]+, not NULL */
  const char* version;       /* the plugin's own version, e.g. "1.0.0"; not NULL */
  const char* description;   /* one line; not NULL */
  const mfglab_param* params;
  uint32_t param_count;
  /* Comma-separated capability names. For a model: the fields it provides
   * ("value,velocity,score,log_prob,collocation"; "collocation": Model::collocation is
   * implemented). For a regularizer or metric: what it needs from the model ("value",
   * "log_prob", "collocation", ...) or the experiment ("hamiltonian"). `validate` refuses a
   * configuration whose model lacks a needed field, before any run.
   * (SDK 1.3) An entry may hold only for some values of one of the plugin's own parameters:
   * "value(parameterization=potential)", "collocation(points=paths|data)". The values are
   * written as in JSON without quotes for strings (true, 3, potential) and must satisfy
   * the parameter's declaration; the engine refuses the manifest otherwise. The engine
   * checks the condition with the parameters of each configuration (defaults filled in). A
   * model of SDK 1.0-1.2 is not required to list "collocation". */
  const char* fields;
  mfglab_factory_fn create;
  /* ---- end of the SDK 1.0 manifest (MFGLAB_MANIFEST_SIZE_1_0) ---- */

  /* (SDK 1.2) sizeof(mfglab_param) as the plugin was built: the stride of params. At least
   * MFGLAB_PARAM_SIZE_1_0 when param_count > 0. Default (manifests of SDK 1.0 and 1.1,
   * whose struct_size stops before this field): MFGLAB_PARAM_SIZE_1_0. */
  uint32_t param_size;

  /* (SDK 1.2) Metrics: which way is better for the values the metric reports, so that
   * comparisons can say "better" or "worse": "lower" or "higher" for every value, or
   * "name=lower,other=higher" per value name (names as in the metric's result). Declared in
   * C++ by a `static constexpr const char* kBetter` member of the plugin class. Default
   * (older manifests, and NULL): not declared; comparisons then say only "lower"/"higher". */
  const char* better;
} mfglab_manifest;

/* Sizes of the SDK 1.0 structs: the least an SDK 1.x plugin provides. */
#define MFGLAB_MANIFEST_SIZE_1_0 (offsetof(mfglab_manifest, create) + sizeof(mfglab_factory_fn))
#define MFGLAB_PARAM_SIZE_1_0 (offsetof(mfglab_param, doc) + sizeof(const char*))

typedef const mfglab_manifest* (*mfglab_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* MFGLAB_MANIFEST_H */
