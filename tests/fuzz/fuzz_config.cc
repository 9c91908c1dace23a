// Fuzz target: arbitrary bytes as a pgbouncer.ini, through config::parseConfig (the loader's
// in-memory entry point: the same code loadConfig runs after reading the file). Every rejection
// must be a ConfigError; anything else escaping (std::out_of_range from a number conversion, a
// crash) is a bug. Inputs with %include are skipped: they would read files from this machine.
// A config that loads must also accept SET of its own listen_port (config::withSetting).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string text(reinterpret_cast<const char*>(data), size);
  if (text.find("%include") != std::string::npos) return 0;
  std::shared_ptr<const config::Config> cfg;
  try {
    cfg = config::parseConfig(text, "/nonexistent/sluice-fuzz/pgbouncer.ini");
  } catch (const config::ConfigError&) {
    return 0;
  }
  fuzz::check(cfg != nullptr, "parseConfig returned null without throwing");
  try {
    auto again =
        config::withSetting(*cfg, "listen_port", std::to_string(cfg->settings.listen_port));
    fuzz::check(again != nullptr, "withSetting returned null");
  } catch (const config::ConfigError&) {
    fuzz::fail("a loaded config refuses SET of its own listen_port");
  }
  return 0;
}
