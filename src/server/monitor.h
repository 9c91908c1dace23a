// PoolMonitor: every monitor_interval, one log line per pool with its servers (total, idle,
// active), waiting clients and utilization; at warn level when utilization exceeds
// monitor_warn_utilization or any client waits. Driven by the App's janitor on the control
// loop; not thread-safe (one caller).
#pragma once

#include "common/clock.h"
#include "config/config.h"
#include "pool/pool_registry.h"

namespace sluice::server {

class PoolMonitor {
 public:
  // Logs when monitor_interval has passed since the last lines (0 turns the monitor off).
  void tick(TimePoint t, const config::Settings& s, const pool::PoolRegistry& pools);

 private:
  TimePoint last_ = now();
};

}  // namespace sluice::server
