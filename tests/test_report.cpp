// `mfglab report`: one self-contained HTML page (no network, no external file), well-formed
// for a strict XML parser, rendered by a real browser (headless Chromium) to a page that is
// not blank; failures and provenance on it; the run folders untouched; bad input refused.
#include <catch2/catch.hpp>

#include <cairo.h>

#include <filesystem>
#include <map>
#include <regex>
#include <string>

#include "cli.h"

namespace fs = std::filesystem;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::shell;
using mfglab::test::TempDir;

namespace {

std::map<std::string, std::string> tree_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().string()] = read_text(e.path().string());
  return out;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("mfglab report writes one self-contained page that a browser renders", "[report]") {
  TempDir tmp("report");
  // Two arms; the second diverges (its runs fail with a non-finite loss).
  auto file = tmp.file("study.json", R"({"name": "study", "seeds": [0, 1],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 256, "test_size": 128}},
    "model": {"plugin": "sgm", "params": {"width": 16, "depth": 1, "sample_steps": 5}},
    "variants": {"calm": {"train": {"optimizer": {"lr": 0.003}}},
                 "wild": {"train": {"optimizer": {"lr": 1e30}}}},
    "train": {"iterations": 20, "batch_size": 32},
    "eval": {"samples": 64, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]}})");
  const std::string results = tmp.str() + "/results";
  mfglab_cli("run " + file + " --out " + results + " --quiet");  // exit 1: the wild arm fails
  const auto before = tree_of(results);
  const std::string page = tmp.str() + "/report.html";
  auto r = mfglab_cli("report " + results + "/study --out " + page + " --baseline calm");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const std::string html = read_text(page);

  // Self-contained: every image inline, nothing fetched.
  CHECK(count_of(html, "src=\"data:image/png;base64,") >= 2);  // samples and losses at least
  CHECK(!std::regex_search(html, std::regex(R"((src|href)\s*=\s*"(https?:|//|file:))")));
  CHECK(html.find("<link") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  // What it says: the arms and how they differ, the paired table, the failures, provenance.
  CHECK(html.find("variant=calm") != std::string::npos);
  CHECK(html.find("/train/optimizer/lr") != std::string::npos);
  CHECK(html.find("paired against") != std::string::npos);
  CHECK(html.find("non-finite loss term") != std::string::npos);
  CHECK(html.find("sha256") != std::string::npos);
  CHECK(html.find("mfglab 0.") != std::string::npos);

  // A strict parser (XML: every tag closed, every entity known) reads it.
  auto xml = shell("python3 -c \"import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])\" " + page);
  INFO(xml.err);
  CHECK(xml.exit_code == 0);

  // A real browser renders it to a page that is neither blank nor of another size.
  const std::string png = tmp.str() + "/report.png";
  auto browser = shell("timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,1400 "
                       "--screenshot=" + png + " file://" + page);
  INFO(browser.out << browser.err);
  REQUIRE(fs::exists(png));
  cairo_surface_t* image = cairo_image_surface_create_from_png(png.c_str());
  REQUIRE(cairo_surface_status(image) == CAIRO_STATUS_SUCCESS);
  CHECK(cairo_image_surface_get_width(image) == 1000);
  CHECK(cairo_image_surface_get_height(image) == 1400);
  cairo_surface_flush(image);
  const unsigned char* data = cairo_image_surface_get_data(image);
  const int stride = cairo_image_surface_get_stride(image);
  size_t ink = 0, total = 0;
  for (int y = 0; y < 1400; y += 2)
    for (int x = 0; x < 1000; x += 2, ++total) {
      const auto* px = reinterpret_cast<const uint32_t*>(data + y * stride) + x;
      if ((*px & 0xffffff) != 0xffffff) ++ink;
    }
  cairo_surface_destroy(image);
  CHECK(ink > total / 50);  // text, tables and figures: far more than 2% of the page
  CHECK(ink < total);       // and not a solid block

  CHECK(tree_of(results) == before);  // the run folders are only read
}

TEST_CASE("mfglab report refuses what it cannot report on", "[report]") {
  TempDir tmp("report_bad");
  fs::create_directories(tmp.path / "empty");
  auto empty = mfglab_cli("report " + tmp.str() + "/empty --out " + tmp.str() + "/r.html");
  CHECK(empty.exit_code == 2);
  CHECK(empty.err.find("no finished runs") != std::string::npos);
  CHECK(mfglab_cli("report " + tmp.str() + "/missing --out " + tmp.str() + "/r.html").exit_code == 2);
  CHECK(!fs::exists(tmp.path / "r.html"));
}
