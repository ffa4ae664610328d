#include "schema.h"

#include <cmath>
#include <string>
#include <vector>

#include "experiment.h"
#include "plugin_host.h"

namespace mfglab::engine {

namespace {

using json = nlohmann::json;

json integer(double min, double max = NAN) {
  json s = {{"type", "integer"}, {"minimum", min}};
  if (!std::isnan(max)) s["maximum"] = max;
  return s;
}

json number(double min, bool exclusive = false) {
  return {{"type", "number"}, {exclusive ? "exclusiveMinimum" : "minimum", min}};
}

json described(json s, const char* doc, const json& def = json()) {
  s["description"] = doc;
  if (!def.is_null()) s["default"] = def;
  return s;
}

// The bounds of a declared int/number parameter.
void add_bounds(json& s, const mfglab_param& p) {
  if (!std::isnan(p.min)) s[p.min_exclusive ? "exclusiveMinimum" : "minimum"] = p.min;
  if (!std::isnan(p.max)) s[p.max_exclusive ? "exclusiveMaximum" : "maximum"] = p.max;
}

// One declared parameter, as plugin_host.cpp's check_value reads it.
json param_schema(const mfglab_param& p) {
  const std::string type = p.type;
  json s = json::object();
  if (type == "int" || type == "number") {
    s["type"] = type == "int" ? "integer" : "number";
    add_bounds(s, p);
  } else if (type == "numbers") {
    json one = {{"type", "number"}};
    add_bounds(one, p);
    s["anyOf"] = {one, {{"type", "array"}, {"items", one}, {"minItems", 1}}};
  } else if (type == "bool") {
    s["type"] = "boolean";
  } else if (type == "string") {
    s["type"] = "string";
    if (p.choices) {
      json choices = json::array();
      std::string c = p.choices;
      for (size_t start = 0; start <= c.size();) {
        const size_t bar = std::min(c.find('|', start), c.size());
        choices.push_back(c.substr(start, bar - start));
        start = bar + 1;
      }
      s["enum"] = choices;
    }
  }  // "json": any value, checked by the plugin
  if (p.doc) s["description"] = p.doc;
  s["default"] = json::parse(p.default_json, nullptr, false);
  if (s["default"].is_discarded()) s.erase("default");
  return s;
}

// {"plugin": NAME, "params": {...}} for each plugin of a kind, with the keys a use of that
// kind may add (a regularizer's weight, a metric's label).
json plugin_uses(const PluginHost& host, int32_t kind, const json& extra_keys) {
  json options = json::array();
  for (const LoadedPlugin* p : host.plugins(kind)) {
    const auto& m = *p->manifest;
    json params = json::object();
    for (uint32_t i = 0; i < m.param_count; ++i) params[m.params[i].name] = param_schema(m.params[i]);
    json properties = {{"plugin", {{"const", m.name}}},
                       {"params", {{"type", "object"}, {"properties", params}, {"additionalProperties", false}}}};
    for (const auto& [key, value] : extra_keys.items()) properties[key] = value;
    options.push_back({{"type", "object"},
                       {"title", std::string(m.name) + " (" + kind_name(kind) + " plugin, version " + m.version + ")"},
                       {"description", m.description},
                       {"properties", properties},
                       {"required", {"plugin"}},
                       {"additionalProperties", false}});
  }
  json plugin_names = json::array();
  for (const auto& name : host.names(kind)) plugin_names.push_back(name);
  // An unknown name matches no option; editors complete the name from this list.
  return {{"type", "object"},
          {"properties", {{"plugin", {{"enum", plugin_names}, {"description", std::string("the ") + kind_name(kind) + " plugin"}}}}},
          {"required", {"plugin"}},
          {"oneOf", options}};
}

}  // namespace

json train_settings_schema() {
  const TrainConfig d;  // the engine's defaults
  json optimizer = {
      {"type", "object"},
      {"additionalProperties", false},
      {"properties",
       {{"type", described({{"enum", {"adam", "sgd"}}}, "the optimizer", d.optimizer)},
        {"lr", described(number(0, true), "learning rate", d.lr)},
        {"betas", described({{"type", "array"},
                             {"items", {{"type", "number"}, {"minimum", 0}, {"exclusiveMaximum", 1}}},
                             {"minItems", 2},
                             {"maxItems", 2}},
                            "Adam's two decay rates", {d.beta1, d.beta2})},
        {"momentum", described({{"type", "number"}, {"minimum", 0}, {"maximum", 1}}, "SGD's momentum", d.momentum)},
        {"weight_decay", described(number(0), "L2 penalty on the parameters", d.weight_decay)}}}};
  json schedule = {
      {"type", "object"},
      {"additionalProperties", false},
      {"properties",
       {{"type", described({{"enum", {"constant", "step", "exponential", "cosine"}}}, "the learning-rate schedule", d.schedule)},
        {"step_size", described(integer(1, 1e9), "step: multiply the rate by gamma every step_size iterations", d.step_size)},
        {"gamma", described({{"type", "number"}, {"exclusiveMinimum", 0}, {"maximum", 1}},
                            "step and exponential (per iteration): the factor", d.gamma)},
        {"min_lr", described(number(0), "cosine: the rate at the last iteration", d.min_lr)}}}};
  return {{"type", "object"},
          {"description", "the training loop; every key has a default"},
          {"additionalProperties", false},
          {"properties",
           {{"iterations", described(integer(0, 1e9), "optimizer steps", d.iterations)},
            {"batch_size", described(integer(1, 1e8), "samples per step", d.batch_size)},
            {"optimizer", optimizer},
            {"schedule", schedule},
            {"grad_clip", described(number(0), "largest global gradient norm; 0: no clipping", d.grad_clip)},
            {"log_every", described(integer(1, 1e9), "iterations between log lines", d.log_every)},
            {"checkpoint_every", described(integer(0, 1e9), "iterations between checkpoints; 0: only the last", d.checkpoint_every)},
            {"time_limit", described(number(0, true), "wall-clock seconds a run may take before it is stopped")},
            {"memory_limit", described({{"anyOf", {integer(1), {{"type", "string"}, {"pattern", "^[0-9]{1,15}(\\.[0-9]{1,15})?[KMGTkmgt]$"}}}}},
                                       "a run's memory limit: bytes, or a size such as \"512M\", \"4G\" (powers of 1024)")},
            {"data_parallel", described({{"type", "boolean"}}, "under MPI, every rank trains this run on its share of each batch",
                                        d.data_parallel)}}}};
}

json eval_settings_schema(const PluginHost& host) {
  const EvalConfig d;
  return {{"type", "object"},
          {"additionalProperties", false},
          {"properties",
           {{"samples", described(integer(1, 1e8), "samples drawn for the final metrics", d.samples)},
            {"every", described(integer(0, 1e9), "iterations between periodic evaluations; 0: only at the end", d.every)},
            {"calibration_seed", described(integer(0),
                                           "the seed whose held-out data calibrates data-dependent metric settings "
                                           "(mmd's median-heuristic bandwidth) for every run; default: the first seed")},
            {"map_points", described(integer(0, 1e7),
                                     "write map.npy: the images at the horizon of the first N held-out points of "
                                     "calibration_seed under the model's flow (needs its velocity); compare then "
                                     "reports the spread of the maps across seeds; 0: off",
                                     d.map_points)},
            {"map_steps", described(integer(1, 1e6), "RK4 steps of the flow that makes map.npy", d.map_steps)},
            {"metrics", described({{"type", "array"},
                                   {"items", plugin_uses(host, MFGLAB_KIND_METRIC,
                                                         {{"label", described({{"type", "string"}, {"minLength", 1}},
                                                                              "the metric's name in results, when one metric is used twice")}})}},
                                  "metric plugins, each {\"plugin\", \"params\", \"label\"} (mfglab plugins --kind metric)",
                                  json::array())}}}};
}

json experiment_schema(const PluginHost& host) {
  const json name = {{"type", "string"},
                     {"pattern", "^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"},
                     {"maxLength", kMaxNameBytes}};
  // The sections a configuration has; a variant replaces any of them.
  json sections = {
      {"dtype", described({{"enum", {"float32", "float64"}}}, "the models' floating-point type", "float32")},
      {"dataset", {{"$ref", "#/$defs/dataset"}}},
      {"model", {{"$ref", "#/$defs/model"}}},
      {"hamiltonian", {{"anyOf", {{{"$ref", "#/$defs/hamiltonian"}}, {{"type", "null"}}}}}},
      {"regularizers", {{"type", "array"}, {"items", {{"$ref", "#/$defs/regularizer"}}}}},
      {"train", {{"$ref", "#/$defs/train"}}},
      {"eval", {{"$ref", "#/$defs/eval"}}}};
  json variant_properties = sections;
  variant_properties["description"] = {{"type", "string"}};
  json properties = sections;
  properties["name"] = described(name, "a short identifier, used as the results folder");
  properties["description"] = {{"type", "string"}};
  properties["seeds"] = described({{"type", "array"}, {"items", {{"type", "integer"}, {"minimum", 0}}}, {"minItems", 1}, {"uniqueItems", true}},
                                  "one run per seed", {0});
  properties["sweep"] = {{"type", "object"},
                         {"description", "\"section.key\" paths to lists of values; runs are their Cartesian product"},
                         {"propertyNames", {{"pattern", "^(dtype|dataset|model|hamiltonian|regularizers|train|eval)(\\..+)?$"}}},
                         {"additionalProperties", {{"type", "array"}, {"minItems", 1}}}};
  properties["variants"] = {{"type", "object"},
                            {"description", "the arms of a study: each replaces some sections of the file"},
                            {"minProperties", 1},
                            {"propertyNames", {{"pattern", name["pattern"]}, {"maxLength", kMaxNameBytes}}},
                            {"additionalProperties", {{"type", "object"},
                                                      {"properties", variant_properties},
                                                      {"additionalProperties", false},
                                                      {"minProperties", 1}}}};
  return {{"$schema", "https://json-schema.org/draft/2020-12/schema"},
          {"title", "mfglab experiment file"},
          {"description", "Generated by `mfglab schema` from the installed plugins; `mfglab validate` is the authority."},
          {"type", "object"},
          {"properties", properties},
          {"required", {"name"}},
          {"additionalProperties", false},
          // A file without variants or sweep holds its dataset and model itself.
          {"if", {{"not", {{"anyOf", {{{"required", {"variants"}}}, {{"required", {"sweep"}}}}}}}}},
          {"then", {{"required", {"dataset", "model"}}}},
          {"$defs",
           {{"dataset", plugin_uses(host, MFGLAB_KIND_DATASET, json::object())},
            {"model", plugin_uses(host, MFGLAB_KIND_MODEL, json::object())},
            {"hamiltonian", plugin_uses(host, MFGLAB_KIND_HAMILTONIAN, json::object())},
            {"regularizer", plugin_uses(host, MFGLAB_KIND_REGULARIZER,
                                        {{"weight", described(number(0), "the penalty's weight in the loss", 1.0)}})},
            {"train", train_settings_schema()},
            {"eval", eval_settings_schema(host)}}}};
}

}  // namespace mfglab::engine
