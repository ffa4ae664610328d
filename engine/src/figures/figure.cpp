#include "figure.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>

#include <fmt/format.h>

#include "mfglab/params.h"  // mfglab::Error
#include "results.h"        // write_file_atomic

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

}  // namespace mfglab::engine
