// Declared parameters (what a plugin accepts) and resolved parameters (what it receives).
// No LibTorch here: the engine validates experiment files against these declarations
// without creating any tensor.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mfglab {

// The error type plugins throw for bad input or unsupported requests. The engine
// catches any std::exception at its edge and reports what() with the plugin's name.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One parameter declaration, built with the helpers below and chained bounds, e.g.
//   int_param("width", 64, "hidden units per layer").at_least(1)
struct ParamSpec {
  std::string name;
  std::string type;  // int | number | bool | string | numbers | json
  std::string default_json;
  std::string choices;  // '|'-separated, strings only
  std::string doc;
  double min = std::numeric_limits<double>::quiet_NaN();
  double max = std::numeric_limits<double>::quiet_NaN();
  bool min_exclusive = false;
  bool max_exclusive = false;

  ParamSpec& at_least(double v) { min = v; min_exclusive = false; return *this; }
  ParamSpec& above(double v) { min = v; min_exclusive = true; return *this; }
  ParamSpec& at_most(double v) { max = v; max_exclusive = false; return *this; }
  ParamSpec& below(double v) { max = v; max_exclusive = true; return *this; }
  ParamSpec& range(double lo, double hi) { return at_least(lo).at_most(hi); }
};

inline ParamSpec int_param(std::string name, int64_t def, std::string doc) {
  return {std::move(name), "int", nlohmann::json(def).dump(), "", std::move(doc)};
}
inline ParamSpec number_param(std::string name, double def, std::string doc) {
  return {std::move(name), "number", nlohmann::json(def).dump(), "", std::move(doc)};
}
inline ParamSpec bool_param(std::string name, bool def, std::string doc) {
  return {std::move(name), "bool", nlohmann::json(def).dump(), "", std::move(doc)};
}
inline ParamSpec string_param(std::string name, std::string def, std::string doc) {
  return {std::move(name), "string", nlohmann::json(def).dump(), "", std::move(doc)};
}
// A string restricted to the '|'-separated choices.
inline ParamSpec choice_param(std::string name, std::string def, std::string choices,
                              std::string doc) {
  return {std::move(name), "string", nlohmann::json(def).dump(), std::move(choices),
          std::move(doc)};
}
// A number or a list of numbers; Params::numbers() always returns a list.
inline ParamSpec numbers_param(std::string name, std::vector<double> def, std::string doc) {
  return {std::move(name), "numbers", nlohmann::json(def).dump(), "", std::move(doc)};
}
// Any JSON value; the plugin checks it itself and throws mfglab::Error when it is wrong.
inline ParamSpec json_param(std::string name, const nlohmann::json& def, std::string doc) {
  return {std::move(name), "json", def.dump(), "", std::move(doc)};
}

// Resolved parameters handed to a plugin's constructor: every declared parameter is
// present (defaults filled in) and has been checked against its declaration.
class Params {
 public:
  Params() : json_(nlohmann::json::object()) {}
  explicit Params(nlohmann::json j) : json_(std::move(j)) {}
  static Params parse(const char* text) { return Params(nlohmann::json::parse(text)); }

  bool has(const std::string& key) const { return json_.contains(key); }
  const nlohmann::json& raw(const std::string& key) const { return at(key); }
  const nlohmann::json& json() const { return json_; }

  int64_t integer(const std::string& key) const { return at(key).get<int64_t>(); }
  double number(const std::string& key) const { return at(key).get<double>(); }
  bool flag(const std::string& key) const { return at(key).get<bool>(); }
  std::string string(const std::string& key) const { return at(key).get<std::string>(); }
  std::vector<double> numbers(const std::string& key) const {
    const auto& v = at(key);
    if (v.is_number()) return {v.get<double>()};
    return v.get<std::vector<double>>();
  }

 private:
  const nlohmann::json& at(const std::string& key) const {
    auto it = json_.find(key);
    if (it == json_.end()) throw Error("parameter '" + key + "' is not declared by this plugin");
    return *it;
  }
  nlohmann::json json_;
};

}  // namespace mfglab
