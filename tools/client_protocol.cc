#include "tools/client_protocol.h"

#include <fmt/format.h>

#include "protocol/sqlstate.h"
#include "protocol/wire.h"

namespace sluice::tools {

namespace {
// Larger messages from a server are not expected by the tools' queries; refuse instead of
// buffering without limit.
constexpr uint32_t kMaxMessage = 64u << 20;
}  // namespace

void ClientProtocol::start(std::string& out) {
  std::vector<std::pair<std::string, std::string>> params = {{"user", login_.user},
                                                             {"database", login_.database}};
  for (const auto& p : login_.params) params.push_back(p);
  protocol::appendStartup(out, params);
  state_ = State::kLoggingIn;
}

void ClientProtocol::sendQuery(std::string_view sql, std::string& out) {
  if (state_ != State::kReady) return;  // caller's bug; the query is not sent
  result_ = QueryResult{};
  protocol::appendQuery(out, sql);
  state_ = State::kBusy;
}

void ClientProtocol::fail(std::string sqlstate, std::string message) {
  if (state_ == State::kFailed) return;
  failure_ = Failure{std::move(sqlstate), std::move(message), true};
  state_ = State::kFailed;
}

void ClientProtocol::onEof(std::string_view why) {
  if (state_ == State::kFailed) return;
  fail("", std::string(why));
}

void ClientProtocol::onData(std::string& in, std::string& out) {
  size_t pos = 0;
  while (state_ != State::kFailed) {
    auto h = protocol::peekHeader(std::string_view(in).substr(pos));
    if (!h) break;
    if (h->length < 4 || h->length > kMaxMessage) {
      fail("", fmt::format("protocol violation: message '{}' with length {}", h->type, h->length));
      break;
    }
    if (in.size() - pos < h->total()) break;
    handleMessage(h->type, std::string_view(in).substr(pos + protocol::kHeaderSize, h->length - 4),
                  out);
    pos += h->total();
  }
  in.erase(0, pos);
}

void ClientProtocol::handleAuth(std::string_view payload, std::string& out) {
  protocol::Reader r(payload);
  int32_t code = r.int32();
  const std::string& pw = login_.password;
  if (r.failed()) {
    fail("", "protocol violation: authentication request without a code");
    return;
  }
  switch (code) {
    case protocol::kAuthOk:
      return;
    case protocol::kAuthCleartext:
      if (pw.empty() || protocol::secretKind(pw) != protocol::SecretKind::kPlain) {
        fail(sqlstate::kInvalidPassword,
             fmt::format("server asked for a cleartext password and none is known for user \"{}\"",
                         login_.user));
        return;
      }
      protocol::appendPassword(out, pw);
      return;
    case protocol::kAuthMd5: {
      std::string_view salt = r.bytes(4);
      if (r.failed()) break;
      std::string secret;
      switch (protocol::secretKind(pw)) {
        case protocol::SecretKind::kPlain:
          secret = protocol::md5PasswordSecret(login_.user, pw);
          break;
        case protocol::SecretKind::kMd5:
          secret = pw;
          break;
        case protocol::SecretKind::kScram:
          fail(sqlstate::kInvalidPassword,
               fmt::format("server asked for md5 and only a SCRAM secret is known for user \"{}\"",
                           login_.user));
          return;
      }
      if (pw.empty()) {
        fail(sqlstate::kInvalidPassword,
             fmt::format("server asked for an md5 password and none is known for user \"{}\"",
                         login_.user));
        return;
      }
      protocol::appendPassword(
          out, protocol::md5SaltedResponse(secret, reinterpret_cast<const uint8_t*>(salt.data())));
      return;
    }
    case protocol::kAuthSasl: {
      bool has_scram = false;
      while (!r.atEnd() && !r.failed()) {
        auto mech = r.cstring();
        if (mech.empty()) break;
        if (mech == "SCRAM-SHA-256") has_scram = true;
      }
      if (!has_scram) {
        fail(sqlstate::kFeatureNotSupported, "server offers no supported SASL mechanism");
        return;
      }
      if (pw.empty() || protocol::secretKind(pw) != protocol::SecretKind::kPlain) {
        fail(sqlstate::kInvalidPassword,
             fmt::format("server asked for SCRAM-SHA-256 and no plain password is known for user "
                         "\"{}\"",
                         login_.user));
        return;
      }
      scram_ = protocol::ScramClient::fromPassword(pw);
      protocol::appendSaslInitialResponse(out, "SCRAM-SHA-256", scram_->clientFirst());
      return;
    }
    case protocol::kAuthSaslContinue: {
      if (!scram_) break;
      auto res = scram_->handleServerFirst(r.rest());
      if (!res) {
        fail(sqlstate::kInvalidPassword, "SCRAM exchange failed: " + res.message());
        return;
      }
      protocol::appendSaslResponse(out, *res);
      return;
    }
    case protocol::kAuthSaslFinal: {
      if (!scram_) break;
      Status st = scram_->handleServerFinal(r.rest());
      if (!st) fail(sqlstate::kInvalidPassword, "SCRAM server signature: " + st.message());
      return;
    }
    default:
      fail(sqlstate::kFeatureNotSupported,
           fmt::format("server asked for an unsupported authentication method ({})", code));
      return;
  }
  fail("", fmt::format("protocol violation: malformed authentication request ({})", code));
}

void ClientProtocol::handleMessage(char type, std::string_view payload, std::string& out) {
  switch (type) {
    case 'R':
      if (state_ != State::kLoggingIn) {
        fail("", "protocol violation: authentication request after login");
        return;
      }
      handleAuth(payload, out);
      return;
    case 'E': {
      auto fields = protocol::parseErrorFields(payload);
      Failure f{fields['C'], fields['M'], false};
      if (!fields['D'].empty()) f.message += " (" + fields['D'] + ")";
      const std::string& severity = fields['V'].empty() ? fields['S'] : fields['V'];
      if (severity == "FATAL" || severity == "PANIC" || state_ == State::kLoggingIn) {
        fail(std::move(f.sqlstate), std::move(f.message));
        return;
      }
      result_.error = std::move(f);  // the query ends with its ReadyForQuery
      return;
    }
    case 'Z': {
      protocol::Reader r(payload);
      uint8_t status = r.byte();
      if (r.failed()) {
        fail("", "protocol violation: empty ReadyForQuery");
        return;
      }
      tx_status_ = char(status);
      state_ = State::kReady;
      return;
    }
    case 'S': {
      protocol::Reader r(payload);
      std::string name(r.cstring());
      std::string value(r.cstring());
      if (!r.failed()) params_.emplace_back(std::move(name), std::move(value));
      return;
    }
    case 'T': {
      protocol::Reader r(payload);
      int n = r.int16();
      result_.columns.clear();
      for (int i = 0; i < n && !r.failed(); ++i) {
        result_.columns.emplace_back(r.cstring());
        r.bytes(18);  // table oid, column, type oid, size, modifier, format
      }
      if (r.failed()) fail("", "protocol violation: malformed RowDescription");
      return;
    }
    case 'D': {
      protocol::Reader r(payload);
      int n = r.int16();
      std::vector<std::optional<std::string>> row;
      for (int i = 0; i < n && !r.failed(); ++i) {
        int32_t len = r.int32();
        if (len < 0) {
          row.emplace_back(std::nullopt);
        } else {
          row.emplace_back(std::string(r.bytes(size_t(len))));
        }
      }
      if (r.failed()) {
        fail("", "protocol violation: malformed DataRow");
        return;
      }
      result_.rows.push_back(std::move(row));
      return;
    }
    case 'C': {
      protocol::Reader r(payload);
      result_.command_tag = std::string(r.cstring());
      return;
    }
    case 'G': {  // CopyInResponse: the tools send no data; abort it
      protocol::Writer w(out);
      w.begin('f');
      w.cstring("sluice tools do not send COPY data");
      w.end();
      return;
    }
  }
  // BackendKeyData, NoticeResponse, NotificationResponse, EmptyQueryResponse, CopyOut data and
  // anything else a query may produce: nothing to do.
}

}  // namespace sluice::tools
