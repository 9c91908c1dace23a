// The tools' client state machine against server bytes built by the wire codec and a real
// ScramServer (the same code sluice's own client authentication uses).
#include "tools/client_protocol.h"

#include <gtest/gtest.h>

#include "protocol/auth_crypto.h"
#include "protocol/wire.h"

namespace sluice::tools {
namespace {

using protocol::Reader;

// Splits `out` into (type, payload) messages.
std::vector<std::pair<char, std::string>> messages(const std::string& out) {
  std::vector<std::pair<char, std::string>> v;
  size_t pos = 0;
  while (pos + 5 <= out.size()) {
    auto h = protocol::peekHeader(std::string_view(out).substr(pos));
    v.emplace_back(h->type, out.substr(pos + 5, h->length - 4));
    pos += h->total();
  }
  EXPECT_EQ(pos, out.size());
  return v;
}

std::string welcome() {
  std::string s;
  protocol::appendAuthRequest(s, protocol::kAuthOk);
  protocol::appendParameterStatus(s, "server_version", "15.0");
  protocol::appendBackendKeyData(s, 1, 2);
  protocol::appendReadyForQuery(s, 'I');
  return s;
}

TEST(ClientProtocol, TrustLoginAndQueryWithRows) {
  ClientProtocol c({"alice", "", "app", {{"application_name", "t"}}});
  std::string out;
  c.start(out);
  auto startup = protocol::parseStartupPacket(out);
  auto* sm = std::get_if<protocol::StartupMessage>(&startup);
  ASSERT_NE(sm, nullptr);
  EXPECT_EQ(*sm->find("user"), "alice");
  EXPECT_EQ(*sm->find("database"), "app");
  EXPECT_EQ(*sm->find("application_name"), "t");
  out.clear();
  // Delivered a byte at a time: framing must not depend on read sizes.
  std::string server = welcome();
  std::string in;
  for (char ch : server) {
    in.push_back(ch);
    c.onData(in, out);
  }
  EXPECT_TRUE(in.empty());
  EXPECT_EQ(c.state(), ClientProtocol::State::kReady);
  EXPECT_EQ(c.parameters().at(0).second, "15.0");
  c.sendQuery("SELECT 1, NULL", out);
  EXPECT_EQ(c.state(), ClientProtocol::State::kBusy);
  auto sent = messages(out);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].first, 'Q');
  EXPECT_EQ(sent[0].second, std::string("SELECT 1, NULL\0", 15));
  in.clear();
  protocol::appendRowDescription(in, {"a", "b"}, {23, 25});
  protocol::appendDataRow(in, {std::string("1"), std::nullopt});
  protocol::appendCommandComplete(in, "SELECT 1");
  protocol::appendReadyForQuery(in, 'I');
  c.onData(in, out);
  ASSERT_EQ(c.state(), ClientProtocol::State::kReady);
  const QueryResult& r = c.result();
  EXPECT_EQ(r.columns, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(r.rows.size(), 1u);
  EXPECT_EQ(r.rows[0][0], "1");
  EXPECT_FALSE(r.rows[0][1].has_value());
  EXPECT_EQ(r.command_tag, "SELECT 1");
  EXPECT_FALSE(r.error);
}

TEST(ClientProtocol, Md5AnswerIsPostgresScheme) {
  ClientProtocol c({"bob", "pw", "db", {}});
  std::string out;
  c.start(out);
  out.clear();
  std::string in;
  const uint8_t salt[4] = {1, 2, 3, 4};
  protocol::appendAuthRequest(in, protocol::kAuthMd5,
                              std::string_view(reinterpret_cast<const char*>(salt), 4));
  c.onData(in, out);
  auto sent = messages(out);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].first, 'p');
  std::string inner = protocol::md5Hex("pwbob");
  std::string expected =
      "md5" + protocol::md5Hex(inner + std::string(reinterpret_cast<const char*>(salt), 4));
  EXPECT_EQ(sent[0].second, expected + std::string(1, '\0'));
  // An md5 secret (from an auth_file) gives the same answer.
  ClientProtocol s({"bob", protocol::md5PasswordSecret("bob", "pw"), "db", {}});
  std::string out2;
  s.start(out2);
  out2.clear();
  std::string in2;
  protocol::appendAuthRequest(in2, protocol::kAuthMd5,
                              std::string_view(reinterpret_cast<const char*>(salt), 4));
  s.onData(in2, out2);
  EXPECT_EQ(out2, out);
}

TEST(ClientProtocol, ScramAgainstScramServer) {
  ClientProtocol c({"carol", "secret", "db", {}});
  protocol::ScramServer server(protocol::scramSecretFromPassword("secret", "saltsalt", 4096));
  std::string out, in;
  c.start(out);
  out.clear();
  protocol::Writer w(in);
  w.begin('R');
  w.int32(protocol::kAuthSasl);
  w.cstring("SCRAM-SHA-256");
  w.byte(0);
  w.end();
  c.onData(in, out);
  auto sent = messages(out);
  ASSERT_EQ(sent.size(), 1u);
  ASSERT_EQ(sent[0].first, 'p');
  Reader r(sent[0].second);
  EXPECT_EQ(r.cstring(), "SCRAM-SHA-256");
  int32_t len = r.int32();
  auto first = server.handleClientFirst(r.bytes(size_t(len)));
  ASSERT_TRUE(first) << first.message();
  out.clear();
  protocol::appendAuthRequest(in, protocol::kAuthSaslContinue, *first);
  c.onData(in, out);
  sent = messages(out);
  ASSERT_EQ(sent.size(), 1u);
  auto final_msg = server.handleClientFinal(sent[0].second);
  ASSERT_TRUE(final_msg) << final_msg.message();
  out.clear();
  protocol::appendAuthRequest(in, protocol::kAuthSaslFinal, *final_msg);
  in += welcome();
  c.onData(in, out);
  EXPECT_EQ(c.state(), ClientProtocol::State::kReady);
  EXPECT_FALSE(c.failure());
}

TEST(ClientProtocol, ScramWrongServerSignatureFails) {
  ClientProtocol c({"carol", "secret", "db", {}});
  std::string out, in;
  c.start(out);
  protocol::Writer w(in);
  w.begin('R');
  w.int32(protocol::kAuthSasl);
  w.cstring("SCRAM-SHA-256");
  w.byte(0);
  w.end();
  c.onData(in, out);
  protocol::appendAuthRequest(in, protocol::kAuthSaslFinal, "v=AAAA");
  c.onData(in, out);
  ASSERT_EQ(c.state(), ClientProtocol::State::kFailed);
  EXPECT_EQ(c.failure()->sqlstate, "28P01");
}

TEST(ClientProtocol, LoginErrorAndQueryErrorAndFatal) {
  ClientProtocol c({"dave", "", "db", {}});
  std::string out, in;
  c.start(out);
  protocol::appendError(in, {"FATAL", "53300", "sorry, too many clients already", "", ""});
  c.onData(in, out);
  ASSERT_EQ(c.state(), ClientProtocol::State::kFailed);
  EXPECT_EQ(c.failure()->sqlstate, "53300");
  EXPECT_EQ(c.failure()->message, "sorry, too many clients already");

  ClientProtocol q({"dave", "", "db", {}});
  q.start(out);
  in = welcome();
  q.onData(in, out);
  q.sendQuery("SELEC", out);
  protocol::appendError(in, {"ERROR", "42601", "syntax error", "", ""});
  protocol::appendReadyForQuery(in, 'I');
  q.onData(in, out);
  ASSERT_EQ(q.state(), ClientProtocol::State::kReady);
  ASSERT_TRUE(q.result().error);
  EXPECT_EQ(q.result().error->sqlstate, "42601");
  // A FATAL error while busy (sluice's idle_transaction_timeout) is what the client reports,
  // not the EOF that follows.
  q.sendQuery("COMMIT", out);
  protocol::appendError(in, {"FATAL", "25P03", "idle_transaction_timeout", "", ""});
  q.onData(in, out);
  q.onEof();
  ASSERT_EQ(q.state(), ClientProtocol::State::kFailed);
  EXPECT_EQ(q.failure()->sqlstate, "25P03");
}

TEST(ClientProtocol, MalformedInputFailsWithoutCrashing) {
  ClientProtocol c({"eve", "pw", "db", {}});
  std::string out, in;
  c.start(out);
  in = std::string("R\0\0\0\x02", 5);  // length below 4
  c.onData(in, out);
  EXPECT_EQ(c.state(), ClientProtocol::State::kFailed);
  EXPECT_NE(c.failure()->message.find("protocol violation"), std::string::npos);

  ClientProtocol d({"eve", "pw", "db", {}});
  d.start(out);
  in = std::string("R\0\0\0\x06\0\0", 7);  // truncated auth code
  d.onData(in, out);
  EXPECT_EQ(d.state(), ClientProtocol::State::kFailed);

  ClientProtocol e({"eve", "", "db", {}});
  e.start(out);
  in.clear();
  protocol::appendAuthRequest(in, protocol::kAuthCleartext);
  e.onData(in, out);
  ASSERT_EQ(e.state(), ClientProtocol::State::kFailed);
  EXPECT_NE(e.failure()->message.find("cleartext"), std::string::npos);
}

}  // namespace
}  // namespace sluice::tools
