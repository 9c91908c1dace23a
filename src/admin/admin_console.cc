#include "admin/admin_console.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "protocol/sqlstate.h"
#include "protocol/wire.h"
#include "session/client_session.h"

namespace sluice::admin {

namespace {
using Row = std::vector<std::optional<std::string>>;

std::string table(const std::vector<std::string>& cols, const std::vector<Row>& rows,
                  const std::string& tag) {
  std::string out;
  protocol::appendRowDescription(out, cols, {});
  for (const auto& r : rows) protocol::appendDataRow(out, r);
  protocol::appendCommandComplete(out, tag.empty() ? fmt::format("SHOW") : tag);
  return out;
}

std::string errorReply(const std::string& msg) {
  std::string out;
  protocol::ErrorInfo e;
  e.sqlstate = sqlstate::kSyntaxError;
  e.message = msg;
  protocol::appendError(out, e);
  return out;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}
}  // namespace

AdminConsole::AdminConsole(session::SessionContext* ctx, ControlPlane* control)
    : ctx_(ctx), control_(control) {
  commands_["SHOW POOLS"] = [this](auto&, auto&) { return showPools(); };
  commands_["SHOW VERSION"] = [this](auto&, auto&) { return showVersion(); };
  commands_["SHOW HELP"] = [this](auto&, auto&) { return showHelp(); };
  commands_["RELOAD"] = [this](auto&, auto&) {
    control_->reloadConfig();
    std::string out;
    protocol::appendCommandComplete(out, "RELOAD");
    return out;
  };
  commands_["SHUTDOWN"] = [this](auto&, auto&) {
    control_->shutdown(false);
    std::string out;
    protocol::appendCommandComplete(out, "SHUTDOWN");
    return out;
  };
}

void AdminConsole::execute(const std::shared_ptr<session::ClientSession>& session,
                           const std::string& sql, std::function<void(std::string)> reply) {
  reply(executeNow(*session, sql));
}

std::string AdminConsole::executeNow(session::ClientSession& session, const std::string& sql) {
  std::string s = sql;
  while (!s.empty() && (std::isspace(static_cast<unsigned char>(s.back())) || s.back() == ';')) s.pop_back();
  s.erase(0, s.find_first_not_of(" \t\r\n"));
  if (s.empty()) {
    std::string out;
    protocol::appendEmptyQueryResponse(out);
    return out;
  }
  std::string u = upper(s);
  // Longest matching command prefix wins ("SHOW POOLS" before "SHOW").
  const Command* best = nullptr;
  size_t best_len = 0;
  std::string arg;
  for (const auto& [name, cmd] : commands_) {
    if (u.rfind(name, 0) == 0 && (u.size() == name.size() || std::isspace(static_cast<unsigned char>(u[name.size()]))) &&
        name.size() > best_len) {
      best = &cmd;
      best_len = name.size();
      arg = s.substr(name.size());
    }
  }
  if (!best) return errorReply("sluice: unknown admin command: " + s + " (try SHOW HELP)");
  arg.erase(0, arg.find_first_not_of(" \t"));
  return (*best)(session, arg);
}

std::string AdminConsole::showPools() {
  std::vector<Row> rows;
  for (auto& p : ctx_->pools->all()) {
    auto st = p->stats();
    auto n = [](int v) { return std::optional<std::string>(std::to_string(v)); };
    rows.push_back({st.database, st.user, n(st.clients - st.waiting), n(st.waiting), n(0), n(0),
                    n(st.active), n(st.idle), n(0), n(0), n(st.login), n(int(st.max_wait_s)),
                    n(int((st.max_wait_s - int(st.max_wait_s)) * 1e6)),
                    std::string(config::poolModeName(st.mode))});
  }
  return table({"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                "cl_waiting_cancel_req", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login",
                "maxwait", "maxwait_us", "pool_mode"},
               rows, "SHOW");
}

std::string AdminConsole::showVersion() {
  return table({"version"}, {{std::string("sluice " SLUICE_VERSION)}}, "SHOW");
}

std::string AdminConsole::showHelp() {
  std::string out;
  protocol::ErrorInfo n;
  n.severity = "NOTICE";
  n.sqlstate = "00000";
  n.message = "Console usage";
  std::string detail;
  for (const auto& [name, cmd] : commands_) detail += "\n\t" + name;
  n.detail = detail;
  protocol::appendNotice(out, n);
  protocol::appendCommandComplete(out, "SHOW");
  return out;
}

}  // namespace sluice::admin
