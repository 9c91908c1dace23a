#include "server/monitor.h"

#include "common/log.h"

namespace sluice::server {

void PoolMonitor::tick(TimePoint t, const config::Settings& s, const pool::PoolRegistry& pools) {
  if (s.monitor_interval.count() <= 0 || t - last_ < s.monitor_interval) return;
  last_ = t;
  for (const auto& p : pools.all()) {
    pool::PoolStats st = p->stats();
    double utilization = st.pool_size > 0 ? 100.0 * st.active / st.pool_size : 0.0;
    bool warn = utilization > s.monitor_warn_utilization || st.waiting > 0;
    auto level = warn ? spdlog::level::warn : spdlog::level::info;
    spdlog::log(level,
                "monitor: pool {}: total {}, idle {}, active {}, waiting {}, utilization {:.0f}% "
                "(pool_size {}, max wait {:.1f} s)",
                p->name(), st.total, st.idle, st.active, st.waiting, utilization, st.pool_size,
                st.max_wait_s);
  }
}

}  // namespace sluice::server
