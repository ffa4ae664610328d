// `mfglab schema`: a JSON Schema (draft 2020-12) of experiment files, built from the
// installed plugins' manifests, so that editors check and complete experiment files as
// they are typed. The engine's validator (experiment.h) stays the authority: the schema
// cannot see what a sweep or a variant changes, nor what a regularizer needs of a model.
#pragma once

#include <nlohmann/json.hpp>

namespace mfglab::engine {

class PluginHost;

nlohmann::json experiment_schema(const PluginHost& host);

// The schemas of the engine's own sections, "train" and "eval", with their descriptions and
// defaults; `mfglab describe train` and `describe eval` print them.
nlohmann::json train_settings_schema();
nlohmann::json eval_settings_schema(const PluginHost& host);

}  // namespace mfglab::engine
