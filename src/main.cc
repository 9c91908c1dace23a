// sluice: flags in, run, exit code out.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <thread>

#include "common/log.h"
#include "config/config.h"
#include "pool/pool_registry.h"
#include "server/app.h"
#include "tools/check.h"
#include "tools/stress.h"

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

  sluice::tools::StressOptions so;
  auto* stress = cli.add_subcommand(
      "stress", "run waves of concurrent connections against a PostgreSQL endpoint and report");
  stress->add_option("--url", so.url, "postgres://user:password@host:port/dbname")->required();
  stress->add_option("--requests", so.requests, "concurrent connections per wave")
      ->capture_default_str();
  stress->add_option("--waves", so.waves, "number of waves")->capture_default_str();
  stress->add_option("--delay", so.delay_ms, "milliseconds between waves")->capture_default_str();
  stress->add_option("--query", so.query, "SQL each connection runs")->capture_default_str();
  stress->add_option("--hold-ms", so.hold_ms, "keep each connection this long after the query")
      ->capture_default_str();
  stress->add_flag("--in-transaction", so.in_transaction,
                   "run the query and the hold inside BEGIN ... COMMIT");
  stress->add_option("--ops", so.ops, "sluice's http_listen (http://host:port): /readyz per wave");
  stress->add_option("--json", so.json_path, "also write the report as JSON to this file");
  stress
      ->add_option("--timeout", so.timeout_ms,
                   "milliseconds a connection may take to log in and run its query")
      ->capture_default_str();

  sluice::tools::CheckOptions co;
  auto* sizing = cli.add_subcommand(
      "check",
      "validate CONFIG, read each database's connection limits, print a sizing report; exit 1 "
      "when the pools can exhaust a database");
  sizing->add_option("config", co.config_path, "path to the configuration file")->required();
  sizing->add_option("--instances", co.instances, "sluice processes sharing these databases")
      ->capture_default_str();
  bool no_connect = false;
  sizing->add_flag("--no-connect", no_connect, "do not connect: config arithmetic only");
  sizing->add_option("--timeout", co.timeout_ms, "milliseconds per database connection")
      ->capture_default_str();
  CLI11_PARSE(cli, argc, argv);

  if (stress->parsed()) return sluice::tools::runStress(so);
  if (sizing->parsed()) {
    co.connect = !no_connect;
    return sluice::tools::runCheck(co);
  }

  try {
    if (check->parsed()) {
      auto cfg = sluice::config::loadConfig(config_path);
      for (const auto& w : cfg->warnings) std::cerr << "warning: " << w << "\n";
      std::cout << "ok: " << cfg->path << ": " << cfg->databases.size() << " database entries\n";
      return 0;
    }
    // budget_check: do the configured pools fit each database's connection slots?
    auto cfg = sluice::config::loadConfig(config_path);
    const auto mode = cfg->settings.budget_check;
    auto check_budgets = [cfg](bool to_stderr, const sluice::tools::LoginGate* gate) {
      sluice::config::UserList users;
      if (!cfg->settings.auth_file.empty()) {
        try {
          users = sluice::config::loadUserList(cfg->settings.auth_file);
        } catch (const sluice::config::ConfigError&) {
          // The server reports a bad auth_file itself.
        }
      }
      std::vector<std::string> unreachable;
      auto problems = sluice::tools::budgetProblems(*cfg, users, 3000, &unreachable, gate);
      for (const auto& p : problems) {
        if (to_stderr) {
          std::cerr << "sluice: budget_check: " << p << "\n";
        } else {
          SLOG_WARN("budget_check: {} (see `sluice check`; budget_check = refuse would not start)",
                    p);
        }
      }
      return problems.empty();
    };
    if (mode == sluice::config::BudgetCheck::kRefuse && !check_budgets(true, nullptr)) {
      std::cerr
          << "sluice: budget_check = refuse: not starting, the configured pools can exhaust "
             "a database (lower pool_size, set max_db_connections, or raise max_connections)\n";
      return 1;
    }
    sluice::server::App app(config_path);
    if (mode == sluice::config::BudgetCheck::kWarn) {
      // In the background: a database that does not answer must not delay the start. Each of
      // its logins takes one of the database's login slots, as a pool's would.
      app.onStarted([check_budgets, parallelism = cfg->settings.server_connect_parallelism](
                        sluice::pool::PoolRegistry& pools) {
        sluice::tools::LoginGate gate{
            [&pools, parallelism](const std::string& db) {
              while (!pools.tryTakeLoginSlot(db, parallelism)) {
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
              }
            },
            [&pools](const std::string& db) { pools.releaseLoginSlot(db); }};
        check_budgets(false, &gate);
      });
    }
    return app.run();
  } catch (const sluice::config::ConfigError& e) {
    std::cerr << "sluice: configuration error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sluice: " << e.what() << "\n";
    return 1;
  }
}
