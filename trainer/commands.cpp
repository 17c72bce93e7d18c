#include "trainer/commands.h"

#include <spdlog/spdlog.h>

namespace bitforge {

int cmd_run(CommandContext& ctx) {
  (void)ctx;
  throw NotImplemented("bitforge run: the pipeline stages land with the training issue");
}
int cmd_prepare_data(CommandContext&) { throw NotImplemented("bitforge prepare-data"); }
int cmd_train(CommandContext&) { throw NotImplemented("bitforge train"); }
int cmd_distill(CommandContext&) { throw NotImplemented("bitforge distill"); }
int cmd_export(CommandContext&, const std::string&, const std::string&) { throw NotImplemented("bitforge export"); }
int cmd_eval(CommandContext&, const std::string&, const std::string&, bool) { throw NotImplemented("bitforge eval"); }
int cmd_generate(CommandContext&, const std::string&, const std::string&, int64_t, double, int64_t, double, uint64_t) {
  throw NotImplemented("bitforge generate");
}
int cmd_inspect(const std::string&, bool) { throw NotImplemented("bitforge inspect"); }

}  // namespace bitforge
