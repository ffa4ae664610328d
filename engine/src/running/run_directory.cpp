#include "running/run_directory.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "mfglab/params.h"
#include "results.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

FileLock::FileLock(FileLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

FileLock FileLock::acquire(const std::string& path, const std::string& what, double wait_seconds) {
  FileLock lock;
  lock.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (lock.fd_ < 0) throw Error(fmt::format("cannot open the lock file {}: {}", path, std::strerror(errno)));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_seconds);
  while (::flock(lock.fd_, LOCK_EX | LOCK_NB) != 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (::flock(lock.fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    const ssize_t n = ::pread(lock.fd_, buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    throw Error(fmt::format("{} is in use by another mfglab process (pid {}; lock file {})", what, holder, path));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock.fd_, 0) == 0) {
    [[maybe_unused]] ssize_t w = ::pwrite(lock.fd_, pid.data(), pid.size(), 0);
  }
  return lock;
}

bool RunDirectory::has(const std::string& name) const {
  std::error_code ec;
  return fs::is_regular_file(fs::symlink_status(file(name), ec));
}

std::string RunDirectory::status() const {
  if (!has(run_files::summary)) return "";
  try {
    auto s = read_json_file(file(run_files::summary));
    return s.is_object() && s.contains("status") && s["status"].is_string() ? s["status"].get<std::string>() : "";
  } catch (const std::exception&) {
    return "";
  }
}

bool RunDirectory::finished() const {
  if (!has(run_files::summary)) return false;
  try {
    auto s = read_json_file(file(run_files::summary));
    if (!s.is_object() || s.value("status", "") != "ok") return false;
    if (s.contains("files") && s["files"].is_array())
      for (const auto& f : s["files"])
        if (!f.is_string() || !has(f.get<std::string>())) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

void refuse_symlinks(const std::string& root, const std::string& dir) {
  fs::path r = fs::path(root).lexically_normal(), d = fs::path(dir).lexically_normal();
  auto rel = d.lexically_relative(r);
  if (rel.empty() || *rel.begin() == "..") throw Error(fmt::format("{} is not inside {}", dir, root));
  fs::path at = r;
  for (const auto& part : rel) {
    at /= part;
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(at, ec)))
      throw Error(fmt::format("{} is a symbolic link; mfglab does not follow links inside its results folder", at.string()));
  }
}

void RunDirectory::create(const std::string& root) const {
  refuse_symlinks(root, path_);
  std::error_code ec;
  fs::create_directories(path_, ec);
  if (ec) throw Error(fmt::format("cannot create {}: {}", path_, ec.message()));
  refuse_symlinks(root, path_);  // created concurrently by someone else?
  for (const auto& entry : fs::directory_iterator(path_, ec))
    if (entry.is_symlink())
      throw Error(fmt::format("{} is a symbolic link; mfglab does not follow links inside its results folder",
                              entry.path().string()));
}

nlohmann::json result_defining_config(const nlohmann::json& config) {
  nlohmann::json c = config;
  if (c.is_object() && c.contains("train") && c["train"].is_object()) {
    c["train"].erase("time_limit");
    c["train"].erase("memory_limit");
  }
  return c;
}

bool RunDirectory::records(const nlohmann::json& config) const {
  try {
    return has(run_files::config) &&
           result_defining_config(read_json_file(file(run_files::config))) == result_defining_config(config);
  } catch (const std::exception&) {
    return false;
  }
}

void RunDirectory::check_config(const nlohmann::json& config) const {
  if (!has(run_files::config)) return;
  nlohmann::json recorded;
  try {
    recorded = read_json_file(file(run_files::config));
  } catch (const std::exception&) {
    move_aside(run_files::config);  // unreadable: nothing to compare with; it is kept
    return;
  }
  const auto a = result_defining_config(recorded), b = result_defining_config(config);
  if (a == b) return;
  auto diff = nlohmann::json::diff(a, b);
  std::string where = diff.empty() ? "" : diff[0].value("path", "");
  throw Error(fmt::format("{} holds a run of another configuration (config.json differs at {}); "
                          "use another --out, remove the directory, or rerun with --force to replace it",
                          path_, where.empty() ? "/" : where));
}

std::string RunDirectory::move_aside(const std::string& name) const {
  std::string target = name + ".damaged";
  for (int k = 2; fs::exists(fs::symlink_status(file(target))); ++k) target = fmt::format("{}.damaged.{}", name, k);
  std::error_code ec;
  fs::rename(file(name), file(target), ec);
  if (ec) throw Error(fmt::format("cannot move {} aside: {}", file(name), ec.message()));
  return target;
}

void RunDirectory::remove_temporaries() const {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".tmp.") != std::string::npos) fs::remove(entry.path(), ec);
  }
}

std::vector<std::string> RunDirectory::list_files() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path_, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.empty() || name[0] == '.' || name == run_files::summary ||
        name.find(".tmp.") != std::string::npos || name.find(".damaged") != std::string::npos)
      continue;
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace mfglab::engine
