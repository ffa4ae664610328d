// A run's directory, OUT/<experiment>/<run-id>/: the names of its files, when it counts as
// finished, the configuration it belongs to, and the locks that keep two processes apart.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mfglab::engine {

namespace run_files {
inline constexpr const char* config = "config.json";
inline constexpr const char* summary = "summary.json";  // always the last file a run writes
inline constexpr const char* losses = "losses.csv";
inline constexpr const char* checkpoint = "checkpoint.pt";
inline constexpr const char* evals = "evals.json";
inline constexpr const char* log = "log.txt";
inline constexpr const char* samples = "samples.npy";
inline constexpr const char* data = "data.npy";
inline constexpr const char* map = "map.npy";  // with eval.map_points only
inline constexpr const char* lock = ".lock";
}  // namespace run_files

// An exclusive advisory lock (flock) on a file, holding the owner's pid for messages.
// Released when the object is destroyed or the process dies, so a stale lock never blocks.
class FileLock {
 public:
  FileLock() = default;
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();
  // Takes the lock, waiting up to `wait_seconds` for its holder to let go, or throws
  // mfglab::Error naming the file and the holder's pid.
  static FileLock acquire(const std::string& path, const std::string& what, double wait_seconds = 0);
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

class RunDirectory {
 public:
  explicit RunDirectory(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  bool has(const std::string& name) const;

  // The status in summary.json, or "" when there is none or it is unreadable.
  std::string status() const;
  // Finished: summary.json says "ok" and every file it lists is present. A run killed
  // after its summary but before a listed file existed is not finished: a rerun completes it.
  bool finished() const;

  // Creates the directory under `root` (the results folder), refusing a symbolic link
  // anywhere between root and the run directory, and a link in place of a run file.
  void create(const std::string& root) const;
  // Throws when config.json records another configuration than `config` (settings that do
  // not change results, such as limits, are ignored).
  void check_config(const nlohmann::json& config) const;
  // Whether config.json records `config` (false when it is missing or unreadable); no side effects.
  bool records(const nlohmann::json& config) const;
  // Keeps a damaged file under a new name (name.damaged, name.damaged.2, ...); returns it.
  std::string move_aside(const std::string& name) const;
  // Deletes the temporary files (*.tmp.*) an attempt that was killed left behind.
  void remove_temporaries() const;
  // Every file of the run, for summary.json's list (no temporaries, locks or damaged files).
  std::vector<std::string> list_files() const;

 private:
  std::string path_;
};

// The configuration that decides a run's results: config.json without the settings that
// only bound its resources. Checkpoints and reruns compare this.
nlohmann::json result_defining_config(const nlohmann::json& config);

// Refuses an out directory that is a symbolic link between `root` and `dir` (inclusive of
// dir, exclusive of root); throws mfglab::Error.
void refuse_symlinks(const std::string& root, const std::string& dir);

}  // namespace mfglab::engine
