// AdminConsole: the PgBouncer-compatible admin console (the virtual database "pgbouncer", also
// "sluice"). A command table maps each SHOW/RELOAD/RECONNECT/... command to a function that
// builds its rows from the same pools and lists the data path uses, with PgBouncer 1.18's column
// names, order and types, so operators' scripts and exporters read sluice unchanged.
//
// Owned by the App; one instance serves every admin session. execute() runs on the asking
// client's loop. Commands about pools read only thread-safe state (Pool::stats(), the summed
// statistics shards, the config snapshot) and answer at once; commands about clients and servers
// post a task to every worker loop, each loop reads its own sessions and idle servers, and the last
// loop to finish posts the assembled reply to the asking client's loop. No loop ever waits for
// another.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "admin/pool_views.h"
#include "common/clock.h"
#include "session/session_context.h"

namespace sluice::admin {

// What the console can ask of the process. Implemented by server::App.
class ControlPlane {
 public:
  virtual ~ControlPlane() = default;
  // Reloads the config on the control loop, then calls `done` there with the outcome; the
  // caller posts the answer back to its own loop.
  virtual void reloadConfigAsync(std::function<void(std::string)> done) = 0;
  virtual void shutdown(bool wait_for_clients) = 0;
  // SET key = value: a new config snapshot with that key changed, swapped in on the control
  // loop; `done` gets "" on success or the reason it was refused.
  virtual void setConfigAsync(std::string key, std::string value,
                              std::function<void(std::string)> done) = 0;
};

class AdminConsole : public session::AdminHandler {
 public:
  AdminConsole(session::SessionContext* ctx, ControlPlane* control);
  void execute(const std::shared_ptr<session::ClientSession>& session, const std::string& sql,
               std::function<void(std::string)> reply) override;
  // From the App's janitor (control loop, every 100 ms): answers PAUSE and WAIT_CLOSE once their
  // condition holds; once per stats_period, keeps the per-database totals at the last two period
  // boundaries, which SHOW STATS' averages are computed against.
  void tick(TimePoint t);

  // One command being answered. `reply` must be called exactly once, on the session's loop.
  struct Call {
    std::shared_ptr<session::ClientSession> session;
    std::string arg;  // what followed the command words, trimmed and unquoted
    std::function<void(std::string)> reply;
  };

 private:
  enum class Arg { kNone, kOptional, kRequired };
  struct Command {
    Arg arg = Arg::kNone;
    bool admin_only = false;  // needs admin_users; stats_users may only look
    std::string usage;        // for SHOW HELP; empty: listed among the SHOW words
    std::function<void(Call&)> run;
  };
  void add(std::string words, Arg arg, bool admin_only, std::string usage,
           std::function<void(Call&)> run);
  // Commands answered from thread-safe state, on the calling loop.
  void addNow(std::string words, Arg arg, bool admin_only,
              std::function<std::string(const Call&)> build);

  std::string showHelp() const;
  std::string showDatabases() const;
  std::string showUsers() const;
  std::string showConfig() const;
  std::string showState() const;
  std::string reconnect(const std::string& database) const;
  enum class StatsView { kStats, kTotals, kAverages, kTotalsList };
  std::string showStats(StatsView view) const;
  void killClient(Call& call);
  // PAUSE, RESUME, KILL, DISABLE, ENABLE, WAIT_CLOSE, SET (PgBouncer's semantics).
  void pause(Call& call);
  std::string resume(const std::string& database);
  void kill(Call& call);
  std::string enable(const std::string& database, bool enable);
  void waitClose(Call& call);
  void set(Call& call);
  // Throws "no such database" unless `database` is configured (or served through "*"), and
  // refuses the console's own pseudo-database with "cannot <verb> admin db".
  void requireDatabase(const std::string& database, const char* verb) const;
  // Answers `call` with CommandComplete `tag` on its loop once `done()` holds (checked by tick());
  // `failed()` (optional) ends the wait with its message as an error instead.
  void answerWhen(Call call, std::string tag, std::function<bool()> done,
                  std::function<std::string()> failed = nullptr);
  session::SessionContext* ctx_;
  ControlPlane* control_;
  std::map<std::string, Command> commands_;  // "SHOW CLIENTS", "RELOAD", ... -> handler

  struct Pending {
    Call call;
    std::string tag;
    std::function<bool()> done;
    std::function<std::string()> failed;
  };
  std::mutex pending_mu_;
  std::vector<Pending> pending_;  // GUARDED_BY(pending_mu_)

  // PgBouncer's stats periods: totals per database at the last two boundaries. Averages are
  // (live totals - older_) / (now - older_at_), a window of one to two stats_period.
  mutable std::mutex periods_mu_;
  std::map<std::string, PoolTotals> older_;  // GUARDED_BY(periods_mu_)
  std::map<std::string, PoolTotals> newer_;  // GUARDED_BY(periods_mu_)
  TimePoint older_at_;                       // GUARDED_BY(periods_mu_)
  TimePoint newer_at_;                       // GUARDED_BY(periods_mu_)
};

}  // namespace sluice::admin
