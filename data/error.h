// bitforge::data::DataError — the one exception type the data library throws for user-facing problems
// (bad corpus, malformed files, mismatched shards). Messages name the file (and line / byte offset / field)
// and say what was expected, so a user can fix the input without reading the code.
#pragma once

#include <stdexcept>
#include <string>

namespace bitforge::data {

class DataError : public std::runtime_error {
 public:
  explicit DataError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace bitforge::data
