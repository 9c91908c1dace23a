#include "session/cancel_registry.h"

#include <cstring>

#include "protocol/auth_crypto.h"

namespace sluice::session {

std::pair<uint32_t, uint32_t> CancelRegistry::add(const std::shared_ptr<ClientSession>& client) {
  while (true) {
    std::string r = protocol::randomBytes(8);
    uint32_t pid, key;
    std::memcpy(&pid, r.data(), 4);
    std::memcpy(&key, r.data() + 4, 4);
    pid &= 0x7fffffff;  // looks like a positive pid to clients that print it
    if (pid == 0) continue;
    std::lock_guard lock(mu_);
    if (clients_.emplace(join(pid, key), client).second) return {pid, key};
  }
}

void CancelRegistry::remove(uint32_t pid, uint32_t key) {
  std::lock_guard lock(mu_);
  clients_.erase(join(pid, key));
}

std::shared_ptr<ClientSession> CancelRegistry::find(uint32_t pid, uint32_t key) {
  std::lock_guard lock(mu_);
  auto it = clients_.find(join(pid, key));
  return it == clients_.end() ? nullptr : it->second.lock();
}

}  // namespace sluice::session
