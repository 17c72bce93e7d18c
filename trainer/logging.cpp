#include "trainer/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>

namespace bitforge {

namespace {
std::shared_ptr<spdlog::logger> ensure_logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto l = std::make_shared<spdlog::logger>("bitforge", console);
    l->set_pattern("[%H:%M:%S] [%^%l%$] %v");
    spdlog::set_default_logger(l);
    return l;
  }();
  return logger;
}
}  // namespace

void set_log_level(const std::string& level) {
  auto l = ensure_logger();
  auto lv = spdlog::level::from_str(level);
  if (lv == spdlog::level::off && level != "off")
    throw std::invalid_argument("unknown log level '" + level + "' (trace, debug, info, warn, error)");
  l->set_level(lv);
}

void add_log_file(const std::string& run_dir, const std::string& file_name) {
  auto l = ensure_logger();
  std::filesystem::create_directories(run_dir);
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>((std::filesystem::path(run_dir) / file_name).string());
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  l->sinks().push_back(sink);
  l->flush_on(spdlog::level::info);
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e9) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace bitforge
