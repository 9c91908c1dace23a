// sluice: flags in, run, exit code out.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "config/config.h"
#include "server/app.h"

int main(int argc, char** argv) {  // NOLINT(bugprone-exception-escape): CLI11 parse errors exit
  CLI::App cli{"sluice: a PostgreSQL connection pooler that ends connection-pool exhaustion"};
  cli.set_version_flag("--version,-V", std::string("sluice ") + SLUICE_VERSION);
  cli.require_subcommand(1);
  std::string config_path;
  auto* serve = cli.add_subcommand(
      "serve", "run the pooler in the foreground with CONFIG (pgbouncer.ini format)");
  serve->add_option("config", config_path, "path to the configuration file")->required();
  auto* check =
      cli.add_subcommand("check-config", "load and validate CONFIG, print warnings, exit");
  check->add_option("config", config_path, "path to the configuration file")->required();
  CLI11_PARSE(cli, argc, argv);

  try {
    if (check->parsed()) {
      auto cfg = sluice::config::loadConfig(config_path);
      for (const auto& w : cfg->warnings) std::cerr << "warning: " << w << "\n";
      std::cout << "ok: " << cfg->path << ": " << cfg->databases.size() << " database entries\n";
      return 0;
    }
    sluice::server::App app(config_path);
    return app.run();
  } catch (const sluice::config::ConfigError& e) {
    std::cerr << "sluice: configuration error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sluice: " << e.what() << "\n";
    return 1;
  }
}
