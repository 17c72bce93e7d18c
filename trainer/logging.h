// Logging setup (spdlog): console plus, once a run directory exists, a log file inside it.
#pragma once

#include <string>

namespace bitforge {

/// Sets the global level: trace | debug | info | warn | error. Throws std::invalid_argument on other names.
void set_log_level(const std::string& level);
/// Adds <run_dir>/<file_name> as a second sink of the default logger (appending).
void add_log_file(const std::string& run_dir, const std::string& file_name = "bitforge.log");
/// "1h02m", "3m05s", "12s": durations for ETA lines.
std::string format_duration(double seconds);

}  // namespace bitforge
