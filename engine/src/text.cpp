#include "text.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace mfglab::engine {

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

std::string show_value(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

std::string bounds_text(const mfglab_param& d) {
  std::string lo, hi;
  if (!std::isnan(d.min)) lo = fmt::format("{} {}", d.min_exclusive ? ">" : ">=", d.min);
  if (!std::isnan(d.max)) hi = fmt::format("{} {}", d.max_exclusive ? "<" : "<=", d.max);
  if (!lo.empty() && !hi.empty()) return lo + " and " + hi;
  return lo + hi;
}

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace mfglab::engine
