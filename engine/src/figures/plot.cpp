#include "plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "mfglab/params.h"
#include "results.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

namespace plot {

namespace {

// Sizes in logical pixels. Text uses Cairo's toy font API with DejaVu Sans, which Debian
// installs with fontconfig and which has the Unicode minus, superscripts and subscripts.
constexpr const char* kFont = "DejaVu Sans";
constexpr double kTickFont = 10.5, kLabelFont = 12, kTitleFont = 13, kSubtitleFont = 11.5;
constexpr double kFigureTitleFont = 14.5;
constexpr double kLineSpacing = 1.3;
constexpr double kPad = 8, kTickLen = 4, kGap = 4, kColorbarWidth = 12;

const Color kInk{0.1, 0.1, 0.1}, kSubtle{0.3, 0.3, 0.3}, kGrid{0.91, 0.91, 0.91}, kFrame{0.15, 0.15, 0.15};

void set_color(cairo_t* cr, Color c) { cairo_set_source_rgba(cr, c.r, c.g, c.b, c.a); }

void use_font(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double text_width(cairo_t* cr, const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

double text_height(cairo_t* cr) {
  cairo_font_extents_t fe;
  cairo_font_extents(cr, &fe);
  return fe.ascent + fe.descent;
}

// Draws `s` with the point (ax, ay) of its box at (x, y): ax 0 / 0.5 / 1 = left / centre /
// right, ay 0 / 0.5 / 1 = top / middle / bottom of the font's ascent-to-descent box (so
// that labels with and without descenders line up).
void draw_text(cairo_t* cr, const std::string& s, double x, double y, double ax, double ay) {
  cairo_font_extents_t fe;
  cairo_font_extents(cr, &fe);
  cairo_move_to(cr, x - ax * text_width(cr, s), y - ay * (fe.ascent + fe.descent) + fe.ascent);
  cairo_show_text(cr, s.c_str());
}

// The same, reading upwards (y-axis labels).
void draw_text_up(cairo_t* cr, const std::string& s, double x, double y, double ax, double ay) {
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, -M_PI / 2);
  draw_text(cr, s, 0, 0, ax, ay);
  cairo_restore(cr);
}

// Drops whole UTF-8 code points from the end until `s…` fits.
std::string ellipsize(cairo_t* cr, std::string s, double max_width) {
  if (text_width(cr, s) <= max_width) return s;
  while (!s.empty()) {
    size_t cut = s.size() - 1;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s.erase(cut);
    if (text_width(cr, s + "…") <= max_width) return s + "…";
  }
  return "…";
}

// Selects the font at `size`, or smaller (down to 3/4) when `s` is too wide, and
// ellipsizes what still does not fit.
std::string fit_text(cairo_t* cr, const std::string& s, double size, bool bold, double max_width) {
  use_font(cr, size, bold);
  const double w = text_width(cr, s);
  if (w <= max_width) return s;
  use_font(cr, std::max(0.75 * size, size * max_width / w), bold);
  return ellipsize(cr, s, max_width);
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  std::stringstream ss(s);
  for (std::string line; std::getline(ss, line);) lines.push_back(line);
  return lines;
}

// A title block: the first line bold at `size`, the others regular at `sub_size`.
double title_block_height(const std::string& title, double size, double sub_size) {
  const auto lines = split_lines(title);
  if (lines.empty()) return 0;
  return kLineSpacing * (size + sub_size * static_cast<double>(lines.size() - 1));
}

void draw_title(cairo_t* cr, const std::string& title, double cx, double top, double max_width, double size,
                double sub_size) {
  double y = top;
  const auto lines = split_lines(title);
  for (size_t i = 0; i < lines.size(); ++i) {
    const double s = i == 0 ? size : sub_size;
    const std::string fitted = fit_text(cr, lines[i], s, i == 0, max_width);
    set_color(cr, i == 0 ? kInk : kSubtle);
    draw_text(cr, fitted, cx, y, 0.5, 0);
    y += kLineSpacing * s;
  }
}

std::string superscript(int n) {
  static const char* const digits[] = {"⁰", "¹", "²", "³", "⁴", "⁵", "⁶", "⁷", "⁸", "⁹"};
  std::string out = n < 0 ? "⁻" : "";
  for (char c : std::to_string(std::abs(n))) out += digits[c - '0'];
  return out;
}

// Typographic minus: a hyphen looks too short next to digits.
std::string with_minus_sign(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '-' ? std::string("−") : std::string(1, c);
  return out;
}

// A value alone, e.g. on a log axis: 0.002, 500, 2×10⁻⁵.
std::string compact_number(double v) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  if (a >= 1e-3 && a < 1e4) return with_minus_sign(fmt::format("{:.3g}", v));
  const int e = static_cast<int>(std::floor(std::log10(a)));
  const std::string m = fmt::format("{:.2g}", v / std::pow(10.0, e));
  return with_minus_sign(m == "1" ? "10" + superscript(e) : m == "-1" ? "-10" + superscript(e) : m + "×10" + superscript(e));
}

struct Ticks {
  std::vector<double> major, minor;
  std::vector<std::string> labels;
};

Ticks linear_ticks(double lo, double hi, int target) {
  Ticks t;
  t.major = nice_ticks(lo, hi, target);
  t.labels = tick_labels(t.major);
  return t;
}

// Decades where there are at least two, else 1-2-5 multiples, else linear ticks; minor
// ticks at 2..9 x 10^k.
Ticks log_ticks(double lo, double hi, int target) {
  Ticks t;
  const int e0 = static_cast<int>(std::floor(std::log10(lo))), e1 = static_cast<int>(std::ceil(std::log10(hi)));
  const double tol = 1e-9;
  auto inside = [&](double v) { return v >= lo * (1 - tol) && v <= hi * (1 + tol); };
  const int stride = std::max(1, static_cast<int>(std::ceil(static_cast<double>(e1 - e0) / std::max(1, target))));
  for (int e = e0; e <= e1; ++e) {
    const double v = std::pow(10.0, e);
    if (inside(v) && (e - e0) % stride == 0) t.major.push_back(v), t.labels.push_back("10" + superscript(e));
  }
  if (t.major.size() < 2) {
    t.major.clear(), t.labels.clear();
    for (int e = e0; e <= e1; ++e)
      for (double m : {1.0, 2.0, 5.0})
        if (inside(m * std::pow(10.0, e))) t.major.push_back(m * std::pow(10.0, e));
    t.labels.clear();
    for (double v : t.major) t.labels.push_back(compact_number(v));
    if (t.major.size() < 2) {
      t.major = nice_ticks(lo, hi, target);
      t.major.erase(std::remove_if(t.major.begin(), t.major.end(), [](double v) { return v <= 0; }), t.major.end());
      t.labels = tick_labels(t.major);
    }
  }
  if (stride == 1)
    for (int e = e0; e <= e1; ++e)
      for (int m = 2; m <= 9; ++m)
        if (inside(m * std::pow(10.0, e))) t.minor.push_back(m * std::pow(10.0, e));
  return t;
}

// Pixels of a sequential colour as ARGB32 (the image surfaces' native layout).
uint32_t argb(Color c) {
  auto byte = [](double v) { return static_cast<uint32_t>(std::lround(std::clamp(v, 0.0, 1.0) * 255)); };
  return 0xFF000000u | (byte(c.r) << 16) | (byte(c.g) << 8) | byte(c.b);
}

// A cols x rows surface (row 0 of `values` at the bottom) coloured over [lo, hi]; cells
// for which `blank` holds stay transparent.
template <typename Blank>
cairo_surface_t* heat_surface(const std::vector<double>& values, int rows, int cols, double lo, double hi, Blank blank) {
  cairo_surface_t* s = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, cols, rows);
  if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) throw Error("cannot create a heat-map image");
  cairo_surface_flush(s);
  unsigned char* data = cairo_image_surface_get_data(s);
  const int stride = cairo_image_surface_get_stride(s);
  const double span = hi > lo ? hi - lo : 1.0;
  for (int i = 0; i < rows; ++i) {
    auto* row = reinterpret_cast<uint32_t*>(data + static_cast<size_t>(rows - 1 - i) * stride);
    for (int j = 0; j < cols; ++j) {
      const double v = values[static_cast<size_t>(i) * cols + j];
      if (blank(v)) row[j] = 0;
      else if (!std::isfinite(v)) row[j] = argb({0.85, 0.85, 0.85});
      else row[j] = argb(colormap((v - lo) / span));
    }
  }
  cairo_surface_mark_dirty(s);
  return s;
}

// Paints a surface over a rectangle, one cell per surface pixel, with sharp cell edges.
void paint_cells(cairo_t* cr, cairo_surface_t* s, double x, double y, double w, double h, cairo_filter_t filter) {
  const int cols = cairo_image_surface_get_width(s), rows = cairo_image_surface_get_height(s);
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_scale(cr, w / cols, h / rows);
  cairo_set_source_surface(cr, s, 0, 0);
  cairo_pattern_set_filter(cairo_get_source(cr), filter);
  cairo_pattern_set_extend(cairo_get_source(cr), CAIRO_EXTEND_PAD);
  cairo_rectangle(cr, 0, 0, cols, rows);
  cairo_fill(cr);
  cairo_restore(cr);
}

Ticks colorbar_ticks(Range colors, double height) {
  return linear_ticks(colors.lo, colors.hi, std::max(2, static_cast<int>(height / 45)));
}

}  // namespace

Range padded(Range r, double frac, bool log) {
  if (!r.valid()) return log ? Range{1, 10} : Range{0, 1};
  if (log) {
    Range l{std::log10(r.lo), std::log10(r.hi)};
    l = padded(l, frac, false);
    return {std::pow(10.0, l.lo), std::pow(10.0, l.hi)};
  }
  if (r.hi == r.lo) {
    const double d = r.lo == 0 ? 1.0 : 0.1 * std::abs(r.lo);
    return {r.lo - d, r.hi + d};
  }
  const double d = frac * (r.hi - r.lo);
  return {r.lo - d, r.hi + d};
}

// ---- colours, ranges, ticks --------------------------------------------------------

Color palette(int i) {
  static const Color colors[] = {{0.12, 0.35, 0.70}, {0.85, 0.33, 0.10}, {0.18, 0.58, 0.28}, {0.55, 0.30, 0.65},
                                 {0.80, 0.58, 0.08}, {0.08, 0.60, 0.70}, {0.80, 0.25, 0.55}, {0.45, 0.45, 0.45}};
  return colors[((i % 8) + 8) % 8];
}

Color colormap(double t) {
  // Dark purple, blue, teal, green, yellow: lightness rises steadily, so the scale reads
  // in grey too.
  static const Color stops[] = {{0.19, 0.05, 0.33}, {0.23, 0.31, 0.56}, {0.13, 0.56, 0.55}, {0.42, 0.79, 0.38}, {0.99, 0.91, 0.15}};
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * 4;
  const int k = std::min(3, static_cast<int>(t));
  const double f = t - k;
  const Color &a = stops[k], &b = stops[k + 1];
  return {a.r + f * (b.r - a.r), a.g + f * (b.g - a.g), a.b + f * (b.b - a.b)};
}

void Range::include(double v) {
  if (!std::isfinite(v)) return;
  if (!valid()) lo = hi = v;
  lo = std::min(lo, v);
  hi = std::max(hi, v);
}

void Range::include(const Range& r) {
  if (r.valid()) include(r.lo), include(r.hi);
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (!(hi > lo)) return {lo};
  target = std::max(1, target);
  // Among steps m x 10^k, the one whose tick count is closest to the target, with a
  // penalty for the less readable multiples (2.5 least of all); ties go to fewer ticks.
  const double magnitude = std::pow(10.0, std::floor(std::log10((hi - lo) / target)));
  double step = magnitude, best = INFINITY;
  for (double scale : {0.1, 1.0, 10.0})
    for (auto [m, penalty] : {std::pair{1.0, 0.0}, {2.0, 0.25}, {2.5, 1.5}, {5.0, 0.25}}) {
      const double candidate = m * scale * magnitude;
      const double count = std::floor(hi / candidate + 1e-9) - std::ceil(lo / candidate - 1e-9) + 1;
      const double score = std::abs(count - target) + penalty;
      if (score < best - 1e-9 || (std::abs(score - best) <= 1e-9 && candidate > step)) best = score, step = candidate;
    }
  std::vector<double> ticks;
  const double eps = 1e-9 * step;
  for (double k = std::ceil((lo - eps) / step); k * step <= hi + eps; k += 1) {
    const double t = k * step;
    ticks.push_back(std::abs(t) < eps ? 0.0 : t);
  }
  return ticks;
}

std::vector<std::string> tick_labels(const std::vector<double>& ticks) {
  if (ticks.empty()) return {};
  double largest = 0;
  for (double t : ticks) largest = std::max(largest, std::abs(t));
  const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : (largest > 0 ? largest : 1.0);
  // Very large or small values share one power of ten: 1.5×10⁻⁴ rather than 0.00015.
  int exponent = 0;
  if (largest >= 1e5 || (largest > 0 && largest < 1e-3)) exponent = static_cast<int>(std::floor(std::log10(largest)));
  const double unit = std::pow(10.0, exponent);
  // The fewest decimals that give every tick its exact value.
  std::vector<std::string> labels;
  for (int decimals = 0; decimals <= 12; ++decimals) {
    labels.clear();
    bool exact = true;
    for (double t : ticks) {
      labels.push_back(fmt::format("{:.{}f}", t / unit + 0.0, decimals));
      exact = exact && std::abs(std::stod(labels.back()) - t / unit) <= 1e-6 * step / unit;
    }
    if (exact) break;
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (ticks[i] == 0) labels[i] = "0";
    else if (exponent != 0) labels[i] = (labels[i] == "1" ? "" : labels[i] + "×") + "10" + superscript(exponent);
    if (labels[i] == "-1×10" + superscript(exponent)) labels[i] = "-10" + superscript(exponent);
    labels[i] = with_minus_sign(labels[i]);
  }
  return labels;
}

// ---- axes ------------------------------------------------------------------------

struct Axes::Series {
  enum class Kind { scatter, hist2d, line, image } kind;
  std::vector<double> x, y, values;
  Color color;
  double size = 1.5;       // dot radius or line width
  int rows = 0, cols = 0;  // image grid; hist2d bins
  Range xr, yr;            // image extent
  std::string label;       // legend entry, or colour bar label
};

Axes::Axes(Rect box) : box_(box) {}

void Axes::scatter(const std::vector<double>& x, const std::vector<double>& y, Color color, double radius,
                   const std::string& label) {
  if (x.size() != y.size()) throw Error("scatter: x and y differ in length");
  series_.push_back(std::make_shared<Series>(Series{Series::Kind::scatter, x, y, {}, color, radius, 0, 0, {}, {}, label}));
}

void Axes::hist2d(const std::vector<double>& x, const std::vector<double>& y, int bins, const std::string& colorbar_label) {
  if (x.size() != y.size()) throw Error("hist2d: x and y differ in length");
  bins = std::clamp(bins, 2, 1000);
  series_.push_back(std::make_shared<Series>(Series{Series::Kind::hist2d, x, y, {}, {}, 0, bins, bins, {}, {}, colorbar_label}));
}

void Axes::line(const std::vector<double>& x, const std::vector<double>& y, Color color, double width,
                const std::string& label) {
  if (x.size() != y.size()) throw Error("line: x and y differ in length");
  series_.push_back(std::make_shared<Series>(Series{Series::Kind::line, x, y, {}, color, width, 0, 0, {}, {}, label}));
}

void Axes::image(const std::vector<double>& values, int rows, int cols, Range x, Range y, const std::string& colorbar_label) {
  if (rows < 1 || cols < 1 || values.size() != static_cast<size_t>(rows) * cols)
    throw Error(fmt::format("image: {} values for a {} x {} grid", values.size(), rows, cols));
  if (!x.valid() || !y.valid()) throw Error("image: invalid extent");
  series_.push_back(std::make_shared<Series>(Series{Series::Kind::image, {}, {}, values, {}, 0, rows, cols, x, y, colorbar_label}));
}

// Data to pixel coordinates of the data area.
struct Axes::Mapping {
  Rect area;
  Range x;
  double y0, y1;  // the y limits, as log10 on a log axis
  bool log_y;
  double X(double v) const { return area.x + (v - x.lo) / (x.hi - x.lo) * area.w; }
  double Y(double v) const {
    const double u = log_y ? (v > 0 ? std::log10(v) : -1e300) : v;
    // Clamped far outside the area: Cairo's fixed-point coordinates overflow beyond ~2^23.
    return std::clamp(area.y + area.h - (u - y0) / (y1 - y0) * area.h, area.y - 1e4, area.y + area.h + 1e4);
  }
};

void Axes::draw_series(cairo_t* cr, const Mapping& m, Range colors) const {
  using Kind = Series::Kind;
  for (const auto& s : series_) {
    switch (s->kind) {
      case Kind::scatter:
        // One fill per dot, so that overlapping translucent dots darken: density shows.
        set_color(cr, s->color);
        for (size_t i = 0; i < s->x.size(); ++i) {
          const double px = m.X(s->x[i]), py = m.Y(s->y[i]);
          if (!std::isfinite(px) || !std::isfinite(py) || !m.area.contains(px, py)) continue;
          cairo_arc(cr, px, py, s->size, 0, 2 * M_PI);
          cairo_fill(cr);
        }
        break;
      case Kind::line: {
        set_color(cr, s->color);
        cairo_set_line_width(cr, s->size);
        cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
        bool pen_down = false;
        for (size_t i = 0; i < s->x.size(); ++i) {
          const bool ok = std::isfinite(s->x[i]) && std::isfinite(s->y[i]) && !(m.log_y && s->y[i] <= 0);
          if (!ok) { pen_down = false; continue; }
          if (pen_down) cairo_line_to(cr, m.X(s->x[i]), m.Y(s->y[i]));
          else cairo_move_to(cr, m.X(s->x[i]), m.Y(s->y[i]));
          pen_down = true;
        }
        cairo_stroke(cr);
        break;
      }
      case Kind::hist2d: {
        cairo_surface_t* surface = heat_surface(s->values, s->rows, s->cols, colors.lo, colors.hi, [](double v) { return v <= 0; });
        paint_cells(cr, surface, m.area.x, m.area.y, m.area.w, m.area.h, CAIRO_FILTER_NEAREST);
        cairo_surface_destroy(surface);
        break;
      }
      case Kind::image: {
        cairo_surface_t* surface = heat_surface(s->values, s->rows, s->cols, colors.lo, colors.hi, [](double) { return false; });
        const double x0 = m.X(s->xr.lo), x1 = m.X(s->xr.hi), y0 = m.Y(s->yr.hi), y1 = m.Y(s->yr.lo);
        paint_cells(cr, surface, x0, y0, x1 - x0, y1 - y0, CAIRO_FILTER_NEAREST);
        cairo_surface_destroy(surface);
        break;
      }
    }
  }
}

// A vertical colour bar right of the data area, with ticks and its label.
void Axes::draw_colorbar(cairo_t* cr, const Series& scaled, Range colors) const {
  const Rect bar{area_.x + area_.w + 3 * kGap, area_.y, kColorbarWidth, area_.h};
  std::vector<double> ramp(256);
  for (int i = 0; i < 256; ++i) ramp[i] = colors.lo + (colors.hi - colors.lo) * i / 255.0;
  cairo_surface_t* surface = heat_surface(ramp, 256, 1, colors.lo, colors.hi, [](double) { return false; });
  paint_cells(cr, surface, bar.x, bar.y, bar.w, bar.h, CAIRO_FILTER_BILINEAR);
  cairo_surface_destroy(surface);
  const Ticks ct = colorbar_ticks(colors, area_.h);
  set_color(cr, kFrame);
  cairo_rectangle(cr, bar.x, bar.y, bar.w, bar.h);
  auto CY = [&](double v) { return std::round(bar.y + bar.h - (v - colors.lo) / (colors.hi - colors.lo) * bar.h); };
  for (double t : ct.major) cairo_move_to(cr, bar.x + bar.w, CY(t)), cairo_line_to(cr, bar.x + bar.w + kTickLen, CY(t));
  cairo_stroke(cr);
  set_color(cr, kInk);
  use_font(cr, kTickFont);
  for (size_t i = 0; i < ct.major.size(); ++i) draw_text(cr, ct.labels[i], bar.x + bar.w + kTickLen + kGap, CY(ct.major[i]), 0, 0.5);
  if (!scaled.label.empty()) {
    double labels_w = 0;
    for (const auto& l : ct.labels) labels_w = std::max(labels_w, text_width(cr, l));
    const double x = bar.x + bar.w + kTickLen + kGap + labels_w + kGap;
    use_font(cr, kLabelFont);
    draw_text_up(cr, ellipsize(cr, scaled.label, area_.h), x, area_.y + area_.h / 2, 0.5, 0);
  }
}

// The legend of the labelled scatters and lines, in the corner that hides the fewest points.
void Axes::draw_legend(cairo_t* cr, const Mapping& m) const {
  using Kind = Series::Kind;
  std::vector<const Series*> entries;
  for (const auto& s : series_)
    if (!s->label.empty() && (s->kind == Kind::scatter || s->kind == Kind::line)) entries.push_back(s.get());
  if (legend_ == Legend::none || entries.empty()) return;
  use_font(cr, kTickFont);
  const double row_h = kLineSpacing * kTickFont, swatch = 18;
  double w = 0;
  for (const auto* e : entries) w = std::max(w, text_width(cr, e->label));
  w = std::min(w + swatch + 3 * kGap + 2 * kGap, area_.w - 12);
  const double h = row_h * entries.size() + 2 * kGap;
  auto corner = [&](Legend where) {
    const bool right = where == Legend::upper_right || where == Legend::lower_right;
    const bool upper = where == Legend::upper_right || where == Legend::upper_left;
    return Rect{right ? area_.x + area_.w - 6 - w : area_.x + 6, upper ? area_.y + 6 : area_.y + area_.h - 6 - h, w, h};
  };
  Legend where = legend_;
  if (where == Legend::best) {
    size_t fewest = SIZE_MAX;
    for (Legend candidate : {Legend::upper_right, Legend::upper_left, Legend::lower_left, Legend::lower_right}) {
      const Rect r = corner(candidate);
      size_t covered = 0;
      for (const auto& s : series_) {
        if (s->kind != Kind::scatter && s->kind != Kind::line) continue;
        const size_t stride = std::max<size_t>(1, s->x.size() / 3000);
        for (size_t i = 0; i < s->x.size(); i += stride) covered += r.contains(m.X(s->x[i]), m.Y(s->y[i])) ? stride : 0;
      }
      if (covered < fewest) fewest = covered, where = candidate;
    }
  }
  const Rect r = corner(where);
  cairo_rectangle(cr, r.x, r.y, r.w, r.h);
  cairo_set_source_rgba(cr, 1, 1, 1, 0.88);
  cairo_fill_preserve(cr);
  cairo_set_source_rgb(cr, 0.75, 0.75, 0.75);
  cairo_set_line_width(cr, 0.8);
  cairo_stroke(cr);
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto* e = entries[i];
    const double cy = r.y + kGap + row_h * (i + 0.5), x0 = r.x + kGap * 1.5;
    set_color(cr, e->color.with_alpha(1));
    if (e->kind == Kind::scatter) {
      cairo_arc(cr, x0 + swatch / 2, cy, std::max(2.5, e->size + 1), 0, 2 * M_PI);
      cairo_fill(cr);
    } else {
      cairo_set_line_width(cr, std::max(1.5, e->size));
      cairo_move_to(cr, x0, cy), cairo_line_to(cr, x0 + swatch, cy);
      cairo_stroke(cr);
    }
    set_color(cr, kInk);
    draw_text(cr, ellipsize(cr, e->label, r.w - swatch - 4 * kGap), x0 + swatch + kGap * 1.5, cy, 0, 0.5);
  }
}

void Axes::render(cairo_t* cr) {
  using Kind = Series::Kind;
  // ---- limits: explicit ones, else the data's with a 5% margin (images: their extent)
  bool log_y = log_y_;
  Range xs = xlim_, ys = ylim_;
  if (!xs.valid() || !ys.valid()) {
    Range dx, dy;
    bool margin = false;
    for (const auto& s : series_) {
      if (s->kind == Kind::image) {
        dx.include(s->xr), dy.include(s->yr);
        continue;
      }
      margin = true;
      for (size_t i = 0; i < s->x.size(); ++i) {
        if (!std::isfinite(s->x[i]) || !std::isfinite(s->y[i]) || (log_y && s->y[i] <= 0)) continue;
        dx.include(s->x[i]), dy.include(s->y[i]);
      }
    }
    if (!xs.valid()) xs = padded(dx, margin ? 0.05 : 0, false);
    if (!ys.valid()) ys = padded(dy, margin ? 0.05 : 0, log_y);
  }
  xs = padded(xs, 0, false);  // widens a zero-width range
  if (log_y && !(ys.lo > 0)) log_y = false;
  ys = padded(ys, 0, log_y);
  const double ly0 = log_y ? std::log10(ys.lo) : ys.lo, ly1 = log_y ? std::log10(ys.hi) : ys.hi;

  // ---- colour scale: the last histogram or image
  const Series* scaled = nullptr;
  for (const auto& s : series_)
    if (s->kind == Kind::hist2d || s->kind == Kind::image) scaled = s.get();
  Range colors;
  for (const auto& s : series_) {
    if (s->kind == Kind::hist2d) {
      auto& c = s->values;  // the counts, over the limits now known
      c.assign(static_cast<size_t>(s->rows) * s->cols, 0.0);
      for (size_t i = 0; i < s->x.size(); ++i) {
        const double fx = (s->x[i] - xs.lo) / (xs.hi - xs.lo), fy = (s->y[i] - ys.lo) / (ys.hi - ys.lo);
        if (!(fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1)) continue;
        const int j = std::min(s->cols - 1, static_cast<int>(fx * s->cols)), k = std::min(s->rows - 1, static_cast<int>(fy * s->rows));
        c[static_cast<size_t>(k) * s->cols + j] += 1;
      }
      if (s.get() == scaled) colors = {0, std::max(1.0, *std::max_element(c.begin(), c.end()))};
    } else if (s->kind == Kind::image && s.get() == scaled) {
      if (color_range_.valid() && color_range_.hi > color_range_.lo) {
        colors = color_range_;
      } else {
        for (double v : s->values) colors.include(v);
        colors = padded(colors, 0, false);
      }
    }
  }

  // ---- layout: title above, tick labels and axis labels below and left, colour bar right
  const double head = title_block_height(title_, kTitleFont, kSubtitleFont);
  use_font(cr, kTickFont);
  const double tick_text_h = text_height(cr);
  const double xlabel_h = xlabel_.empty() ? 0 : kLineSpacing * kLabelFont;
  const double ylabel_h = ylabel_.empty() ? 0 : kLineSpacing * kLabelFont;
  area_.y = std::round(box_.y + kPad + head + (head > 0 ? 6 : 0));
  area_.h = std::round(box_.y + box_.h - kPad - xlabel_h - tick_text_h - kTickLen - kGap) - area_.y;
  auto y_ticks = [&] {
    const int target = std::max(2, static_cast<int>(area_.h / 45));
    return log_y ? log_ticks(ys.lo, ys.hi, target) : linear_ticks(ys.lo, ys.hi, target);
  };
  auto widest = [&](const std::vector<std::string>& labels) {
    double w = 0;
    for (const auto& l : labels) w = std::max(w, text_width(cr, l));
    return w;
  };
  Ticks yt = y_ticks();
  double ylabels_w = widest(yt.labels);
  Ticks ct;
  double colorbar_w = 0;
  if (scaled) {
    ct = colorbar_ticks(colors, area_.h);
    colorbar_w = 3 * kGap + kColorbarWidth + kTickLen + kGap + widest(ct.labels) + (scaled->label.empty() ? 0 : kGap + kLineSpacing * kLabelFont);
  }
  const double left_margin = kPad + ylabel_h + (ylabel_h > 0 ? kGap : 0) + ylabels_w + kGap + kTickLen;
  area_.x = std::round(box_.x + left_margin);
  // Without a colour bar, room for half of an x label centred on the right edge.
  const auto last_x_label = linear_ticks(xs.lo, xs.hi, std::max(2, static_cast<int>((box_.w - left_margin) / 70))).labels;
  const double right_margin = scaled || last_x_label.empty() ? colorbar_w : std::max(0.0, widest({last_x_label.back()}) / 2 + 2 - kPad);
  area_.w = std::round(box_.x + box_.w - kPad - right_margin) - area_.x;
  if (equal_aspect_ && !log_y) {
    // Shrink the area rather than widen the limits: centred across, centred or at the top down.
    const double ratio = (xs.hi - xs.lo) / (ys.hi - ys.lo);
    if (area_.w > area_.h * ratio) {
      const double w = std::round(area_.h * ratio);
      area_.x = std::round(area_.x + (area_.w - w) / 2);
      area_.w = w;
    } else {
      const double h = std::round(area_.w / ratio);
      if (!anchor_top_) area_.y = std::round(area_.y + (area_.h - h) / 2);
      area_.h = h;
      yt = y_ticks();
    }
  }
  if (area_.w < 10 || area_.h < 10) throw Error("the figure is too small for its axes");
  const Mapping m{area_, xs, ly0, ly1, log_y};
  auto X = [&](double x) { return m.X(x); };
  auto Y = [&](double y) { return m.Y(y); };
  // x ticks: as many as fit without their labels touching.
  Ticks xt;
  for (int target = std::max(2, static_cast<int>(area_.w / 70));; --target) {
    xt = linear_ticks(xs.lo, xs.hi, target);
    bool fits = true;
    for (size_t i = 1; i < xt.major.size(); ++i)
      fits = fits && X(xt.major[i]) - X(xt.major[i - 1]) >= (text_width(cr, xt.labels[i]) + text_width(cr, xt.labels[i - 1])) / 2 + 10;
    if (fits || target <= 2) break;
  }

  // A panel without data (only a message) gets a bare frame: its ticks would mean nothing.
  if (series_.empty()) xt = yt = Ticks{};

  // ---- grid, then data clipped to the area, then frame and ticks on top
  cairo_set_line_width(cr, 0.8);
  set_color(cr, kGrid);
  for (double t : xt.major) cairo_move_to(cr, std::round(X(t)), area_.y), cairo_line_to(cr, std::round(X(t)), area_.y + area_.h);
  for (double t : yt.major) cairo_move_to(cr, area_.x, std::round(Y(t))), cairo_line_to(cr, area_.x + area_.w, std::round(Y(t)));
  cairo_stroke(cr);

  cairo_save(cr);
  cairo_rectangle(cr, area_.x, area_.y, area_.w, area_.h);
  cairo_clip(cr);
  draw_series(cr, m, colors);
  cairo_restore(cr);

  set_color(cr, kFrame);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, area_.x, area_.y, area_.w, area_.h);
  cairo_stroke(cr);
  const double bottom = area_.y + area_.h;
  for (double t : xt.major) cairo_move_to(cr, std::round(X(t)), bottom), cairo_line_to(cr, std::round(X(t)), bottom + kTickLen);
  for (double t : yt.major) cairo_move_to(cr, area_.x, std::round(Y(t))), cairo_line_to(cr, area_.x - kTickLen, std::round(Y(t)));
  for (double t : yt.minor) cairo_move_to(cr, area_.x, std::round(Y(t))), cairo_line_to(cr, area_.x - kTickLen * 0.6, std::round(Y(t)));
  cairo_stroke(cr);
  set_color(cr, kInk);
  use_font(cr, kTickFont);
  for (size_t i = 0; i < xt.major.size(); ++i) draw_text(cr, xt.labels[i], X(xt.major[i]), bottom + kTickLen + kGap / 2, 0.5, 0);
  for (size_t i = 0; i < yt.major.size(); ++i) draw_text(cr, yt.labels[i], area_.x - kTickLen - kGap, Y(yt.major[i]), 1, 0.5);
  ylabels_w = widest(yt.labels);

  use_font(cr, kLabelFont);
  if (!xlabel_.empty() && !series_.empty())
    draw_text(cr, ellipsize(cr, xlabel_, area_.w), area_.x + area_.w / 2, bottom + kTickLen + kGap + tick_text_h + 2, 0.5, 0);
  if (!ylabel_.empty() && !series_.empty())
    draw_text_up(cr, ellipsize(cr, ylabel_, area_.h), area_.x - kTickLen - kGap - ylabels_w - kGap, area_.y + area_.h / 2, 0.5, 1);
  if (!title_.empty())
    draw_title(cr, title_, area_.x + area_.w / 2, area_.y - 6 - head, box_.w - 2 * kPad, kTitleFont, kSubtitleFont);

  if (scaled) draw_colorbar(cr, *scaled, colors);
  draw_legend(cr, m);
  if (!message_.empty()) {
    use_font(cr, kLabelFont);
    set_color(cr, kSubtle);
    draw_text(cr, ellipsize(cr, message_, area_.w - 8), area_.x + area_.w / 2, area_.y + area_.h / 2, 0.5, 0.5);
  }
}

// ---- figure ----------------------------------------------------------------------

Figure::Figure(int width, int height, double scale) : width_(width), height_(height), scale_(scale) {
  if (width < 1 || height < 1 || !(scale > 0)) throw Error("invalid figure size");
}

Axes& Figure::add_axes(Rect box) {
  axes_.push_back(std::unique_ptr<Axes>(new Axes(box)));
  cells_.push_back({0, 0, 0});
  return *axes_.back();
}

double Figure::title_height() const {
  return title_.empty() ? 0 : kPad + title_block_height(title_, kFigureTitleFont, kSubtitleFont) + 4;
}

Axes& Figure::subplot(int rows, int cols, int index) {
  if (rows < 1 || cols < 1 || index < 0 || index >= rows * cols) throw Error("subplot: no such cell");
  Axes& ax = add_axes({});
  cells_.back() = {rows, cols, index};
  return ax;
}

int Figure::pixel_width() const { return static_cast<int>(std::lround(width_ * scale_)); }
int Figure::pixel_height() const { return static_cast<int>(std::lround(height_ * scale_)); }

std::string Figure::png_bytes() {
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, pixel_width(), pixel_height());
  cairo_t* cr = cairo_create(surface);
  std::string png;
  try {
    if (cairo_status(cr) != CAIRO_STATUS_SUCCESS) throw Error(fmt::format("cannot create a {} x {} image", pixel_width(), pixel_height()));
    cairo_scale(cr, scale_, scale_);
    // Unhinted metrics: text widths scale exactly with the figure, so layout is the same
    // at any scale.
    cairo_font_options_t* options = cairo_font_options_create();
    cairo_font_options_set_hint_metrics(options, CAIRO_HINT_METRICS_OFF);
    cairo_set_font_options(cr, options);
    cairo_font_options_destroy(options);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    if (!title_.empty()) draw_title(cr, title_, width_ / 2.0, kPad, width_ - 2 * kPad, kFigureTitleFont, kSubtitleFont);
    // Grid cells are placed now, below the title as it is at rendering time.
    for (size_t i = 0; i < axes_.size(); ++i) {
      const Cell& c = cells_[i];
      if (c.rows == 0) continue;
      const double top = title_height(), w = static_cast<double>(width_) / c.cols, h = (height_ - top) / c.rows;
      axes_[i]->box_ = {(c.index % c.cols) * w, top + (c.index / c.cols) * h, w, h};
    }
    for (auto& ax : axes_) ax->render(cr);
    if (cairo_status(cr) != CAIRO_STATUS_SUCCESS) throw Error(fmt::format("drawing failed: {}", cairo_status_to_string(cairo_status(cr))));
    cairo_surface_flush(surface);
    auto append = [](void* out, const unsigned char* data, unsigned int length) {
      static_cast<std::string*>(out)->append(reinterpret_cast<const char*>(data), length);
      return CAIRO_STATUS_SUCCESS;
    };
    const cairo_status_t status = cairo_surface_write_to_png_stream(surface, append, &png);
    if (status != CAIRO_STATUS_SUCCESS) throw Error(fmt::format("PNG encoding failed: {}", cairo_status_to_string(status)));
  } catch (...) {
    cairo_destroy(cr);
    cairo_surface_destroy(surface);
    throw;
  }
  cairo_destroy(cr);
  cairo_surface_destroy(surface);
  return png;
}

void Figure::save_png(const std::string& path) { write_file_atomic(path, png_bytes()); }

std::vector<Rect> Figure::pixel_data_areas() const {
  std::vector<Rect> out;
  for (const auto& ax : axes_) {
    const Rect& a = ax->data_area();
    out.push_back({a.x * scale_, a.y * scale_, a.w * scale_, a.h * scale_});
  }
  return out;
}

}  // namespace plot

// ---- figures of run directories ----------------------------------------------------

namespace {

using plot::Color;
using plot::Range;

constexpr size_t kScatterLimit = 5000;  // more samples than this are drawn as a 2-D histogram
const Color kDataColor{0.3, 0.3, 0.3};

Color sample_color() { return plot::palette(0); }

// A .npy array of any rank as doubles (figures also need the [T, N, 2] trajectories).
struct NdArray {
  std::vector<int64_t> shape;
  std::vector<double> values;
};

NdArray read_npy(const std::string& path) {
  const at::Tensor t = load_npy_array(path).contiguous();
  NdArray a;
  a.shape.assign(t.sizes().begin(), t.sizes().end());
  const double* p = t.data_ptr<double>();
  a.values.assign(p, p + t.numel());
  return a;
}

// The first two coordinates of the points of an [N, d] array (y is empty when d = 1).
struct Cloud {
  std::vector<double> x, y;
  int64_t d = 0;
  size_t size() const { return x.size(); }
};

Cloud read_cloud(const std::string& path) {
  const NdArray a = read_npy(path);
  if (a.shape.empty() || a.shape.size() > 2) throw Error(fmt::format("{}: expected an [N, d] array, got {} dimensions", path, a.shape.size()));
  Cloud c;
  c.d = a.shape.size() == 2 ? a.shape[1] : 1;
  if (c.d < 1) throw Error(fmt::format("{}: points have no coordinates", path));
  for (int64_t i = 0; i < a.shape[0]; ++i) {
    c.x.push_back(a.values[i * c.d]);
    if (c.d >= 2) c.y.push_back(a.values[i * c.d + 1]);
  }
  return c;
}

double quantile(std::vector<double> v, double q) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return NAN;
  const auto k = static_cast<std::ptrdiff_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// What a figure shows of one coordinate: all of the data, and the samples but for far
// outliers (a diverging model must not shrink the data to a dot).
Range view_range(const std::vector<double>& data, const std::vector<double>& samples) {
  Range r;
  for (double v : data) r.include(v);
  if (!samples.empty()) {
    const double q0 = quantile(samples, 0.005), q1 = quantile(samples, 0.995), reach = 0.5 * (q1 - q0);
    for (double v : samples)
      if (v >= q0 - reach && v <= q1 + reach) r.include(v);
  }
  return plot::padded(r, 0.05);
}

struct View {
  Range x, y;
  bool contains(double px, double py) const { return px >= x.lo && px <= x.hi && py >= y.lo && py <= y.hi; }
};

View view_of(const Cloud& samples, const Cloud* data) {
  static const std::vector<double> none;
  return {view_range(data ? data->x : none, samples.x), view_range(data ? data->y : none, samples.y)};
}

// Dots fade as they get many, so that dense regions stay readable.
double dot_alpha(size_t n) { return std::clamp(20 / std::sqrt(static_cast<double>(std::max<size_t>(n, 1))), 0.2, 0.8); }

// The height of a figure `width` wide holding one equal-aspect panel of `v` under a
// two-line title, so that the panel fills it (`colorbar`: one is drawn on the right).
int fitted_height(const View& v, int width, bool colorbar) {
  const double area_w = width - 64 - (colorbar ? 82 : 0);  // y tick labels, axis label, margins
  const double area_h = std::clamp(area_w * (v.y.hi - v.y.lo) / (v.x.hi - v.x.lo), 0.4 * area_w, 1.6 * area_w);
  return static_cast<int>(std::ceil(area_h + 94));  // title above; tick labels and axis label below
}

void frame_view(plot::Axes& ax, const View& v) {
  ax.set_xlim(v.x.lo, v.x.hi);
  ax.set_ylim(v.y.lo, v.y.hi);
  ax.set_equal_aspect(true);
  ax.set_xlabel("x₁");
  ax.set_ylabel("x₂");
}

void scatter_cloud(plot::Axes& ax, const Cloud& c, Color color, double radius, const std::string& label) {
  ax.scatter(c.x, c.y, color.with_alpha(dot_alpha(c.size())), radius, label);
}

int hist_bins(size_t n) { return std::clamp(static_cast<int>(std::sqrt(static_cast<double>(n)) / 2), 30, 160); }

size_t count_outside(const Cloud& c, const View& v) {
  size_t n = 0;
  for (size_t i = 0; i < c.size(); ++i) n += v.contains(c.x[i], c.y[i]) ? 0 : 1;
  return n;
}

// One panel of samples over data: dots up to kScatterLimit samples, a 2-D histogram of
// the samples beyond. Returns a note on samples outside the view ("" when none).
std::string draw_samples(plot::Axes& ax, const Cloud& samples, const Cloud* data) {
  const View view = view_of(samples, data);
  frame_view(ax, view);
  if (samples.size() > kScatterLimit) {
    ax.hist2d(samples.x, samples.y, hist_bins(samples.size()), "samples per bin");
  } else {
    if (data) scatter_cloud(ax, *data, kDataColor, 1.3, fmt::format("held-out data (n = {})", data->size()));
    scatter_cloud(ax, samples, sample_color(), 1.6, fmt::format("samples (n = {})", samples.size()));
  }
  const size_t outside = count_outside(samples, view);
  return outside ? fmt::format("{} sample{} outside the view", outside, outside == 1 ? "" : "s") : "";
}

// 1-D data: normalised histograms of samples and data as step curves.
void draw_samples_1d(plot::Axes& ax, const Cloud& samples, const Cloud* data) {
  static const std::vector<double> none;
  const Range r = view_range(data ? data->x : none, samples.x);
  const int bins = std::clamp(static_cast<int>(std::sqrt(static_cast<double>(samples.size()))), 20, 80);
  const double width = (r.hi - r.lo) / bins;
  double top = 0;
  auto steps = [&](const Cloud& c, Color color, const std::string& label) {
    std::vector<double> count(bins, 0.0);
    for (double v : c.x) {
      const int k = static_cast<int>((v - r.lo) / width);
      if (v >= r.lo && v <= r.hi) count[std::min(k, bins - 1)] += 1;
    }
    std::vector<double> xs, ys;
    for (int k = 0; k < bins; ++k) {
      const double density = count[k] / (static_cast<double>(c.size()) * width);
      top = std::max(top, density);
      xs.insert(xs.end(), {r.lo + k * width, r.lo + (k + 1) * width});
      ys.insert(ys.end(), {density, density});
    }
    ax.line(xs, ys, color, 1.6, label);
  };
  if (data) steps(*data, kDataColor, fmt::format("held-out data (n = {})", data->size()));
  steps(samples, sample_color(), fmt::format("samples (n = {})", samples.size()));
  ax.set_xlim(r.lo, r.hi);
  ax.set_ylim(0, top > 0 ? 1.08 * top : 1);
  ax.set_xlabel("x");
  ax.set_ylabel("density");
}

// What summary.json (or config.json, for a run without a summary yet) says of a run.
struct RunInfo {
  std::string experiment, run_id, label, status;
  bool has_seed = false;
  uint64_t seed = 0;
  nlohmann::json metrics = nlohmann::json::object();
};

RunInfo read_run_info(const fs::path& dir) {
  RunInfo info;
  info.run_id = dir.filename().string();
  info.experiment = dir.parent_path().filename().string();
  nlohmann::json j;
  if (fs::exists(dir / "summary.json")) {
    j = read_json_file((dir / "summary.json").string());
  } else if (fs::exists(dir / "config.json")) {
    j = read_json_file((dir / "config.json").string());
    if (j.is_object() && j.contains("name")) j["experiment"] = j["name"];
  }
  if (!j.is_object()) return info;
  auto text = [&](const char* key, std::string& out) {
    if (j.contains(key) && j[key].is_string()) out = j[key].get<std::string>();
  };
  text("experiment", info.experiment);
  text("run_id", info.run_id);
  text("label", info.label);
  text("status", info.status);
  if (j.contains("seed") && j["seed"].is_number_integer()) info.has_seed = true, info.seed = j["seed"].get<uint64_t>();
  if (j.contains("metrics") && j["metrics"].is_object()) info.metrics = j["metrics"];
  return info;
}

std::string run_title(const RunInfo& r) {
  std::string title = r.experiment.empty() ? r.run_id : r.experiment + " · " + r.run_id;
  if (r.has_seed && r.run_id.find(fmt::format("seed={}", r.seed)) == std::string::npos) title += fmt::format(" · seed {}", r.seed);
  return title;
}

std::vector<PlotFile> saved(plot::Figure& fig, const fs::path& path) {
  fig.save_png(path.string());
  return {PlotFile{path.string(), fig.pixel_data_areas()}};
}

// samples.png; nothing when the run has no samples.npy.
std::vector<PlotFile> plot_samples(const fs::path& dir, const std::string& title) {
  if (!fs::exists(dir / "samples.npy")) return {};
  const Cloud samples = read_cloud((dir / "samples.npy").string());
  std::optional<Cloud> data;
  if (fs::exists(dir / "data.npy")) {
    data = read_cloud((dir / "data.npy").string());
    if (data->d != samples.d) throw Error(fmt::format("data.npy has dimension {} but samples.npy {}", data->d, samples.d));
  }
  const Cloud* d = data ? &*data : nullptr;
  const fs::path out = dir / "samples.png";
  const std::string coords = samples.d > 2 ? fmt::format("first two of {} coordinates", samples.d) : "";
  if (samples.d == 1) {
    plot::Figure fig(640, 460);
    auto& ax = fig.subplot(1, 1, 0);
    ax.set_title(title + (d ? "\nsamples and held-out data, normalised histograms" : "\nsamples, normalised histogram"));
    draw_samples_1d(ax, samples, d);
    return saved(fig, out);
  }
  if (samples.size() > kScatterLimit && d) {
    // Too many samples for dots: data and a sample histogram side by side, same view.
    plot::Figure fig(1180, 560);  // wide enough for both panels to have the same size
    fig.set_title(title + (coords.empty() ? "" : "\n" + coords));
    const View view = view_of(samples, d);
    auto& left = fig.subplot(1, 2, 0);
    frame_view(left, view);
    left.set_title(fmt::format("held-out data\nn = {}", d->size()));
    if (d->size() > kScatterLimit) left.hist2d(d->x, d->y, hist_bins(d->size()), "points per bin");
    else scatter_cloud(left, *d, kDataColor, 1.3, "");
    auto& right = fig.subplot(1, 2, 1);
    const size_t outside = count_outside(samples, view);
    right.set_title(fmt::format("generated samples\nn = {}{}", samples.size(), outside ? fmt::format(", {} outside the view", outside) : ""));
    frame_view(right, view);
    right.hist2d(samples.x, samples.y, hist_bins(samples.size()), "samples per bin");
    return saved(fig, out);
  }
  const int width = samples.size() > kScatterLimit ? 640 : 560;
  plot::Figure fig(width, fitted_height(view_of(samples, d), width, samples.size() > kScatterLimit));
  auto& ax = fig.subplot(1, 1, 0);
  const std::string note = draw_samples(ax, samples, d);
  std::string subtitle = d ? "generated samples over held-out data" : "generated samples";
  for (const auto& extra : {coords, note})
    if (!extra.empty()) subtitle += "; " + extra;
  ax.set_title(title + "\n" + subtitle);
  return saved(fig, out);
}

struct LossTable {
  std::vector<std::string> names;  // loss terms, "total" first
  std::vector<double> iteration;
  std::vector<std::vector<double>> values;  // per name
};

LossTable read_losses(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open the file", path));
  auto cells = [](const std::string& line) {
    std::vector<std::string> out;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) out.push_back(c);
    return out;
  };
  std::string line;
  std::getline(in, line);
  const auto header = cells(line);
  if (header.empty() || header[0] != "iteration") throw Error(fmt::format("{}: expected a header starting with 'iteration'", path));
  LossTable t;
  std::vector<size_t> columns;  // the loss columns: all but iteration, lr and seconds
  for (size_t i = 1; i < header.size(); ++i)
    if (header[i] != "lr" && header[i] != "seconds") columns.push_back(i), t.names.push_back(header[i]);
  t.values.resize(columns.size());
  for (int line_no = 2; std::getline(in, line); ++line_no) {
    if (line.empty()) continue;
    const auto row = cells(line);
    if (row.size() != header.size()) throw Error(fmt::format("{}:{}: {} values, expected {}", path, line_no, row.size(), header.size()));
    try {
      t.iteration.push_back(std::stod(row[0]));
      for (size_t k = 0; k < columns.size(); ++k) t.values[k].push_back(std::stod(row[columns[k]]));
    } catch (const std::exception&) {
      throw Error(fmt::format("{}:{}: not a row of numbers", path, line_no));
    }
  }
  return t;
}

// Centred moving average over `window` points (odd), of log values when `log_scale`
// (a geometric mean suits losses spanning decades).
std::vector<double> smooth(const std::vector<double>& v, size_t window, bool log_scale) {
  const size_t n = v.size(), half = window / 2;
  std::vector<double> sum(n + 1, 0.0), count(n + 1, 0.0), out(n, NAN);
  for (size_t i = 0; i < n; ++i) {
    const double x = log_scale ? std::log(v[i]) : v[i];
    const bool ok = std::isfinite(x);
    sum[i + 1] = sum[i] + (ok ? x : 0.0);
    count[i + 1] = count[i] + (ok ? 1.0 : 0.0);
  }
  for (size_t i = 0; i < n; ++i) {
    const size_t a = i > half ? i - half : 0, b = std::min(n, i + half + 1);
    if (count[b] - count[a] > 0) {
      const double mean = (sum[b] - sum[a]) / (count[b] - count[a]);
      out[i] = log_scale ? std::exp(mean) : mean;
    }
  }
  return out;
}

// losses.png; nothing when the run has no losses.csv or no iteration yet.
std::vector<PlotFile> plot_losses(const fs::path& dir, const std::string& title) {
  if (!fs::exists(dir / "losses.csv")) return {};
  LossTable t = read_losses((dir / "losses.csv").string());
  if (t.iteration.empty() || t.names.empty()) return {};
  // With a single term the total is that term: draw it once.
  if (t.names.size() == 2 && t.names[0] == "total") t.names.erase(t.names.begin()), t.values.erase(t.values.begin());
  bool positive = true;
  for (const auto& column : t.values)
    for (double v : column) positive = positive && (!std::isfinite(v) || v > 0);
  const size_t n = t.iteration.size();
  const size_t window = n >= 100 ? (n / 50) | 1 : 1;

  plot::Figure fig(720, 470);
  auto& ax = fig.subplot(1, 1, 0);
  ax.set_log_y(positive);
  ax.set_xlabel("iteration");
  ax.set_ylabel("loss");
  ax.set_xlim(t.iteration.front(), t.iteration.back());
  Range y;  // the smoothed curves and the bulk of the raw values: a few spikes may leave the view
  int colour = 0;
  for (size_t k = 0; k < t.names.size(); ++k) {
    const Color c = t.names[k] == "total" ? Color{0.1, 0.1, 0.1} : plot::palette(colour++);
    const auto& raw = t.values[k];
    if (window > 1) {
      const auto smoothed = smooth(raw, window, positive);
      ax.line(t.iteration, raw, c.with_alpha(0.25), 0.8);
      ax.line(t.iteration, smoothed, c, 1.8, t.names[k]);
      for (double v : smoothed) y.include(v);
    } else {
      ax.line(t.iteration, raw, c, 1.5, t.names[k]);
    }
    y.include(quantile(raw, 0.005));
    y.include(quantile(raw, 0.995));
  }
  y = plot::padded(y, 0.04, positive);
  ax.set_ylim(y.lo, y.hi);
  ax.set_title(title + "\ntraining loss" + (positive ? " (log scale)" : "") +
               (window > 1 ? fmt::format("; lines: moving average over {} iterations, faint: raw", window) : ""));
  return saved(fig, dir / "losses.png");
}

std::vector<PlotFile> plot_density(const fs::path& dir, const std::string& title) {
  const NdArray a = read_npy((dir / "density.npy").string());
  if (a.shape.size() != 2 || a.shape[0] < 2 || a.shape[1] < 2)
    throw Error(fmt::format("density.npy: expected a G x G grid, got {} dimensions", a.shape.size()));
  const fs::path extent_file = dir / "density_extent.json";
  if (!fs::exists(extent_file)) throw Error("density.npy needs density_extent.json: {\"x\": [lo, hi], \"y\": [lo, hi]}");
  const auto extent = read_json_file(extent_file.string());
  auto range = [&](const char* key) {
    if (!extent.contains(key) || !extent[key].is_array() || extent[key].size() != 2 || !extent[key][0].is_number() || !extent[key][1].is_number())
      throw Error(fmt::format("density_extent.json: \"{}\" must be [lo, hi]", key));
    Range r{extent[key][0].get<double>(), extent[key][1].get<double>()};
    if (!(r.hi > r.lo)) throw Error(fmt::format("density_extent.json: \"{}\" must have lo < hi", key));
    return r;
  };
  const Range xr = range("x"), yr = range("y");
  const int rows = static_cast<int>(a.shape[0]), cols = static_cast<int>(a.shape[1]);
  plot::Figure fig(640, fitted_height({xr, yr}, 640, true));
  auto& ax = fig.subplot(1, 1, 0);
  ax.set_title(title + fmt::format("\nmodel density on a {} × {} grid", rows, cols));
  ax.image(a.values, rows, cols, xr, yr, "density");
  frame_view(ax, {xr, yr});
  return saved(fig, dir / "density.png");
}

// The paths of a trajectories.npy ([T, N, >= 2], time first), thinned to a few hundred
// (more only cover each other), ready to draw.
struct Trajectories {
  std::vector<std::pair<std::vector<double>, std::vector<double>>> lines;
  Cloud start, end;
  View view;
  std::string description;  // "particle trajectories: ..."
};

Trajectories read_trajectories(const fs::path& file) {
  const NdArray a = read_npy(file.string());
  if (a.shape.size() != 3 || a.shape[0] < 1 || a.shape[2] < 2)
    throw Error(fmt::format("trajectories.npy: expected a [T, N, 2] array, got {} dimensions", a.shape.size()));
  const int64_t steps = a.shape[0], paths = a.shape[1], dims = a.shape[2];
  auto at = [&](int64_t t, int64_t i, int64_t k) { return a.values[(t * paths + i) * dims + k]; };
  const int64_t stride = std::max<int64_t>(1, (paths + 299) / 300);
  Trajectories out;
  std::vector<double> all_x, all_y;
  for (int64_t i = 0; i < paths; i += stride) {
    std::vector<double> xs, ys;
    for (int64_t t = 0; t < steps; ++t) xs.push_back(at(t, i, 0)), ys.push_back(at(t, i, 1));
    all_x.insert(all_x.end(), xs.begin(), xs.end());
    all_y.insert(all_y.end(), ys.begin(), ys.end());
    out.start.x.push_back(xs.front()), out.start.y.push_back(ys.front());
    out.end.x.push_back(xs.back()), out.end.y.push_back(ys.back());
    out.lines.emplace_back(std::move(xs), std::move(ys));
  }
  out.view = View{view_range({}, all_x), view_range({}, all_y)};
  out.description = fmt::format("particle trajectories: {} of {} paths, {} time steps{}", out.lines.size(), paths,
                                steps, dims > 2 ? fmt::format(", first two of {} coordinates", dims) : "");
  return out;
}

void draw_trajectories(plot::Axes& ax, const Trajectories& tr) {
  frame_view(ax, tr.view);
  for (size_t i = 0; i < tr.lines.size(); ++i)
    ax.line(tr.lines[i].first, tr.lines[i].second, plot::palette(0).with_alpha(0.3), 0.7, i == 0 ? "paths" : "");
  ax.scatter(tr.start.x, tr.start.y, kDataColor.with_alpha(0.7), 1.6, "first step");
  ax.scatter(tr.end.x, tr.end.y, plot::palette(1).with_alpha(0.8), 1.6, "last step");
}

std::vector<PlotFile> plot_trajectories(const fs::path& dir, const std::string& title) {
  const Trajectories tr = read_trajectories(dir / "trajectories.npy");
  plot::Figure fig(580, fitted_height(tr.view, 580, false));
  auto& ax = fig.subplot(1, 1, 0);
  draw_trajectories(ax, tr);
  ax.set_title(title + "\n" + tr.description);
  return saved(fig, dir / "trajectories.png");
}

std::vector<PlotFile> plot_hjb_residual(const fs::path& dir, const std::string& title) {
  const NdArray a = read_npy((dir / "hjb_residual.npy").string());
  if (a.shape.size() != 3 || a.shape[0] < 1 || a.shape[1] < 2 || a.shape[2] < 2)
    throw Error(fmt::format("hjb_residual.npy: expected a [K, G, G] array, got {} dimensions", a.shape.size()));
  const fs::path info_file = dir / "hjb_residual.json";
  if (!fs::exists(info_file)) throw Error("hjb_residual.npy needs hjb_residual.json");
  const auto info = read_json_file(info_file.string());
  auto range = [&](const char* key) {
    if (!info.contains(key) || !info[key].is_array() || info[key].size() != 2 || !info[key][0].is_number() || !info[key][1].is_number())
      throw Error(fmt::format("hjb_residual.json: \"{}\" must be [lo, hi]", key));
    Range r{info[key][0].get<double>(), info[key][1].get<double>()};
    if (!(r.hi > r.lo)) throw Error(fmt::format("hjb_residual.json: \"{}\" must have lo < hi", key));
    return r;
  };
  const Range xr = range("x"), yr = range("y");
  const int64_t K = a.shape[0], rows = a.shape[1], cols = a.shape[2];
  if (!info.contains("t") || !info["t"].is_array() || static_cast<int64_t>(info["t"].size()) != K)
    throw Error(fmt::format("hjb_residual.json: \"t\" must list the {} slice times", K));
  // log10 |r| on one scale for all slices, so that times compare at a glance. Exact zeros
  // (and anything below 1e-12) sit at the floor.
  std::vector<double> logs(a.values.size());
  Range colors;
  for (size_t i = 0; i < logs.size(); ++i) {
    logs[i] = std::log10(std::max(std::abs(a.values[i]), 1e-12));
    if (std::isfinite(logs[i])) colors.include(logs[i]);
  }
  if (!colors.valid()) throw Error("hjb_residual.npy holds no finite value");
  if (!(colors.hi > colors.lo)) colors = {colors.lo - 0.5, colors.hi + 0.5};
  const int64_t cols_fig = std::min<int64_t>(K, 5), rows_fig = (K + cols_fig - 1) / cols_fig;
  const int panel = 300;
  plot::Figure fig(static_cast<int>(cols_fig * panel), static_cast<int>(rows_fig * (fitted_height({xr, yr}, panel, true) + 10) + 70));
  const size_t cells = static_cast<size_t>(rows * cols);
  for (int64_t k = 0; k < K; ++k) {
    auto& ax = fig.subplot(static_cast<int>(rows_fig), static_cast<int>(cols_fig), static_cast<int>(k));
    ax.set_anchor_top(true);
    ax.set_title(fmt::format("t = {:.3g}", info["t"][k].get<double>()));
    std::vector<double> slice(logs.begin() + k * cells, logs.begin() + (k + 1) * cells);
    ax.image(slice, static_cast<int>(rows), static_cast<int>(cols), xr, yr, "log₁₀ |r|");
    ax.set_color_range(colors);
    frame_view(ax, {xr, yr});
  }
  const int64_t d = info.value("dimension", int64_t{2});
  fig.set_title(title + fmt::format("\nHJB residual |r| of {} on (x₁, x₂){}", info.value("equation", std::string("the model's equation")),
                                    d > 2 ? ", other coordinates 0" : ""));
  return saved(fig, dir / "hjb_residual.png");
}

// Runs one drawer, turning its failure into a message so that the other figures are drawn.
template <typename Draw>
void attempt(std::vector<PlotFile>& files, std::vector<std::string>& errors, const std::string& what, Draw&& draw) {
  try {
    auto more = draw();
    files.insert(files.end(), more.begin(), more.end());
  } catch (const std::exception& e) {
    errors.push_back(fmt::format("{}: {}", what, e.what()));
  }
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

}  // namespace

std::vector<PlotFile> plot_model_extras(const std::string& run_dir, const std::string& title) {
  const fs::path dir(run_dir);
  std::vector<PlotFile> files;
  std::vector<std::string> errors;
  if (fs::exists(dir / "density.npy")) attempt(files, errors, "density.png", [&] { return plot_density(dir, title); });
  if (fs::exists(dir / "trajectories.npy")) attempt(files, errors, "trajectories.png", [&] { return plot_trajectories(dir, title); });
  if (fs::exists(dir / "hjb_residual.npy")) attempt(files, errors, "hjb_residual.png", [&] { return plot_hjb_residual(dir, title); });
  if (!errors.empty()) throw Error(join(errors, "; "));
  return files;
}

std::vector<PlotFile> plot_run(const std::string& run_dir) {
  const fs::path dir(run_dir);
  if (!fs::is_directory(dir)) throw Error(fmt::format("{}: no such directory", run_dir));
  const std::string title = run_title(read_run_info(dir));
  std::vector<PlotFile> files;
  std::vector<std::string> errors;
  attempt(files, errors, "samples.png", [&] { return plot_samples(dir, title); });
  attempt(files, errors, "losses.png", [&] { return plot_losses(dir, title); });
  try {
    auto extras = plot_model_extras(run_dir, title);
    files.insert(files.end(), extras.begin(), extras.end());
  } catch (const std::exception& e) {
    errors.push_back(e.what());
  }
  if (!errors.empty()) throw Error(fmt::format("{}: {}", run_dir, join(errors, "; ")));
  return files;
}

std::vector<std::string> find_run_dirs(const std::vector<std::string>& paths) {
  std::vector<std::string> dirs;
  for (const auto& p : paths) {
    if (!fs::exists(p)) throw Error(fmt::format("{}: no such file or directory", p));
    const size_t before = dirs.size();
    if (fs::is_regular_file(p) && fs::path(p).filename() == "summary.json") dirs.push_back(fs::path(p).parent_path().string());
    else if (fs::exists(fs::path(p) / "summary.json")) dirs.push_back(p);
    else if (fs::is_directory(p))
      for (const auto& e : fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied))
        if (e.is_regular_file() && e.path().filename() == "summary.json") dirs.push_back(e.path().parent_path().string());
    if (dirs.size() == before) throw Error(fmt::format("{}: no run directories (folders with summary.json) in it", p));
  }
  std::sort(dirs.begin(), dirs.end());
  dirs.erase(std::unique(dirs.begin(), dirs.end()), dirs.end());
  return dirs;
}

PlotFile plot_compare(const std::vector<std::string>& paths, const std::string& png_path, CompareView what) {
  struct Config {
    std::string experiment, label;
    std::vector<std::pair<fs::path, RunInfo>> runs;
  };
  std::vector<Config> configs;
  std::map<std::pair<std::string, std::string>, size_t> index;
  std::vector<std::string> experiments;
  for (const auto& dir : find_run_dirs(paths)) {
    RunInfo info = read_run_info(dir);
    auto key = std::make_pair(info.experiment, info.label.empty() ? "default" : info.label);
    if (!index.count(key)) {
      index[key] = configs.size();
      configs.push_back({key.first, key.second, {}});
    }
    if (std::find(experiments.begin(), experiments.end(), info.experiment) == experiments.end()) experiments.push_back(info.experiment);
    configs[index[key]].runs.emplace_back(dir, std::move(info));
  }

  const int n = static_cast<int>(configs.size());
  const int cols = n <= 3 ? n : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  const int rows = (n + cols - 1) / cols;
  plot::Figure fig(std::max(560, cols * 340), rows * 370 + 64);  // 64: the three title lines
  bool projected = false;
  for (int i = 0; i < n; ++i) {
    const Config& c = configs[i];
    auto& ax = fig.subplot(rows, cols, i);
    ax.set_anchor_top(true);  // the titles of a row line up whatever each panel's aspect
    const std::string name = experiments.size() > 1 ? c.experiment + " · " + c.label : c.label;
    std::vector<const std::pair<fs::path, RunInfo>*> ok;
    for (const auto& run : c.runs)
      if (run.second.status == "ok") ok.push_back(&run);
    if (ok.empty()) {
      ax.set_title(name + fmt::format("\n{} run{}, none succeeded", c.runs.size(), c.runs.size() == 1 ? "" : "s"));
      ax.set_message("no successful run");
      frame_view(ax, {{0, 1}, {0, 1}});
      continue;
    }
    std::sort(ok.begin(), ok.end(), [](auto* a, auto* b) { return a->second.seed < b->second.seed; });
    // The headline metric: the first of summary.json, mean ± std over the successful seeds.
    std::string headline = "no metrics";
    const auto& first_metrics = ok.front()->second.metrics;
    if (!first_metrics.empty()) {
      const std::string metric = first_metrics.begin().key();
      std::vector<double> v;
      for (const auto* run : ok)
        if (run->second.metrics.contains(metric) && run->second.metrics[metric].is_number()) v.push_back(run->second.metrics[metric].get<double>());
      double mean = 0, var = 0;
      for (double x : v) mean += x / v.size();
      for (double x : v) var += (x - mean) * (x - mean) / std::max<size_t>(1, v.size() - 1);
      if (v.empty()) headline = metric + " = n/a";
      else if (v.size() == 1) headline = fmt::format("{} = {:.3g} (1 seed)", metric, mean);
      else headline = fmt::format("{} = {:.3g} ± {:.2g} ({} seeds)", metric, mean, std::sqrt(var), v.size());
    }
    ax.set_title(name + "\n" + headline);
    ax.set_legend(plot::Legend::none);
    const fs::path dir = ok.front()->first;
    try {
      if (what == CompareView::trajectories) {
        if (!fs::exists(dir / "trajectories.npy")) throw Error("no trajectories.npy (a model without velocity, or --no-plots)");
        draw_trajectories(ax, read_trajectories(dir / "trajectories.npy"));
        continue;
      }
      if (!fs::exists(dir / "samples.npy")) throw Error("no samples.npy");
      const Cloud samples = read_cloud((dir / "samples.npy").string());
      std::optional<Cloud> data;
      if (fs::exists(dir / "data.npy")) data = read_cloud((dir / "data.npy").string());
      if (data && data->d != samples.d) data.reset();
      projected = projected || samples.d > 2;
      if (samples.d == 1) draw_samples_1d(ax, samples, data ? &*data : nullptr);
      else draw_samples(ax, samples, data ? &*data : nullptr);
    } catch (const std::exception& e) {
      ax.set_message(e.what());  // thrown while reading, before anything was drawn
      frame_view(ax, {{0, 1}, {0, 1}});
    }
  }
  fig.set_title(join(experiments, ", ") + fmt::format(": {} configuration{}", n, n == 1 ? "" : "s") +
                (what == CompareView::trajectories
                     ? "\nparticle paths of each configuration's first seed, from held-out data (grey) to the last step (orange)"
                     : "\nsamples of each configuration's first seed (blue) over held-out data (grey)" +
                           std::string(projected ? ", first two coordinates" : "")) +
                "\npanel titles: headline metric, mean ± std over seeds");
  fig.save_png(png_path);
  return {png_path, fig.pixel_data_areas()};
}

}  // namespace mfglab::engine
