// AdminConsole: the PgBouncer-compatible admin console (the virtual database "pgbouncer", also
// "sluice"). A command table maps each SHOW/PAUSE/RELOAD/... command to a function that builds
// its rows from the same pools and lists the data path uses. Owned by the App; execute() runs on
// the asking client's loop and only reads thread-safe state (pool stats under their locks).
#pragma once

#include <functional>
#include <map>
#include <string>

#include "session/session_context.h"

namespace sluice::admin {

// What the console can ask of the process. Implemented by server::App.
class ControlPlane {
 public:
  virtual ~ControlPlane() = default;
  virtual std::string reloadConfig() = 0;            // blocks until the control loop reloaded
  virtual void shutdown(bool wait_for_clients) = 0;
};

class AdminConsole : public session::AdminHandler {
 public:
  AdminConsole(session::SessionContext* ctx, ControlPlane* control);
  void execute(const std::shared_ptr<session::ClientSession>& session, const std::string& sql,
               std::function<void(std::string)> reply) override;

 private:
  std::string executeNow(session::ClientSession& session, const std::string& sql);
  using Command = std::function<std::string(session::ClientSession&, const std::string& arg)>;
  std::string showPools();
  std::string showVersion();
  std::string showHelp();

  session::SessionContext* ctx_;
  ControlPlane* control_;
  std::map<std::string, Command> commands_;  // upper-case command words -> handler
};

}  // namespace sluice::admin
