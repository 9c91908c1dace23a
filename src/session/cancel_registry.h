// CancelRegistry: maps the BackendKeyData sluice gave each client to that client, so a
// CancelRequest arriving on any loop reaches the right session. Owned by the App; thread-safe
// (one short mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace sluice::session {

class ClientSession;

class CancelRegistry {
 public:
  // Picks an unused (pid, key) pair for `client` and registers it.
  std::pair<uint32_t, uint32_t> add(const std::shared_ptr<ClientSession>& client);
  void remove(uint32_t pid, uint32_t key);
  // The client with exactly this pair, if it is still connected.
  std::shared_ptr<ClientSession> find(uint32_t pid, uint32_t key);

 private:
  static uint64_t join(uint32_t pid, uint32_t key) { return (uint64_t(pid) << 32) | key; }
  std::mutex mu_;
  std::unordered_map<uint64_t, std::weak_ptr<ClientSession>> clients_;  // GUARDED_BY(mu_)
};

}  // namespace sluice::session
