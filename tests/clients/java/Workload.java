// A prepared-statement workload for pgJDBC, run by tests/integration/test_client_matrix.py
// through the pooler in transaction mode:
//
//   java -cp /usr/share/java/postgresql.jar:CLASSES Workload
//
// Connection and sizes from the environment, as for tests/clients/node/workload.js: PGHOST,
// PGPORT, PGUSER, PGPASSWORD, PGDATABASE, MX_TABLE, MX_ACCT, MX_WORKERS, MX_ITERATIONS.
// prepareThreshold=1: every PreparedStatement is a named server-side statement from its first
// execution. Each worker thread has its own connection and, each iteration, inserts a row tagged
// with its id, adds to its balance in a transaction and reads it back, and reads back its own
// rows; DatabaseMetaData (getTables, getColumns, getPrimaryKeys) runs throughout. At a third of
// the run each worker sends DEALLOCATE ALL (pgJDBC notices and prepares again); worker 0 adds a
// column halfway, after which workers read it too. Prints one JSON line like the node workload.
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

public class Workload {
  static final String TABLE = System.getenv("MX_TABLE");
  static final String ACCT = System.getenv("MX_ACCT");
  static final int WORKERS = Integer.parseInt(System.getenv().getOrDefault("MX_WORKERS", "12"));
  static final int ITERATIONS =
      Integer.parseInt(System.getenv().getOrDefault("MX_ITERATIONS", "40"));
  static final AtomicBoolean ddlDone = new AtomicBoolean(false);
  static final AtomicInteger afterDdlReads = new AtomicInteger();
  static final AtomicInteger metadataCalls = new AtomicInteger();
  static final List<String> errors = Collections.synchronizedList(new ArrayList<>());

  static void check(boolean ok, String what) {
    if (!ok) throw new IllegalStateException("wrong result: " + what);
  }

  static Connection connect() throws SQLException {
    String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
        + "/" + System.getenv("PGDATABASE");
    Properties p = new Properties();
    p.setProperty("user", System.getenv("PGUSER"));
    p.setProperty("password", System.getenv("PGPASSWORD"));
    p.setProperty("prepareThreshold", "1");
    p.setProperty("sslmode", "disable");
    p.setProperty("connectTimeout", "10");
    p.setProperty("socketTimeout", "60");
    return DriverManager.getConnection(url, p);
  }

  static void metadata(Connection c, boolean expectNote) throws SQLException {
    DatabaseMetaData md = c.getMetaData();
    try (ResultSet rs = md.getTables(null, "public", TABLE, new String[] {"TABLE"})) {
      check(rs.next() && rs.getString("TABLE_NAME").equals(TABLE) && !rs.next(), "getTables");
    }
    List<String> cols = new ArrayList<>();
    try (ResultSet rs = md.getColumns(null, "public", TABLE, null)) {
      while (rs.next()) cols.add(rs.getString("COLUMN_NAME"));
    }
    check(cols.subList(0, 3).equals(List.of("worker", "seq", "val")), "getColumns " + cols);
    check(!expectNote || cols.equals(List.of("worker", "seq", "val", "note")), "getColumns " + cols);
    List<String> pk = new ArrayList<>();
    try (ResultSet rs = md.getPrimaryKeys(null, "public", TABLE)) {
      while (rs.next()) pk.add(rs.getShort("KEY_SEQ") + ":" + rs.getString("COLUMN_NAME"));
    }
    Collections.sort(pk);
    check(pk.equals(List.of("1:worker", "2:seq")), "getPrimaryKeys " + pk);
    metadataCalls.incrementAndGet();
  }

  static void worker(int w) throws SQLException, InterruptedException {
    try (Connection c = connect();
        PreparedStatement ins =
            c.prepareStatement("INSERT INTO " + TABLE + " (worker, seq, val) VALUES (?, ?, ?)");
        PreparedStatement upd =
            c.prepareStatement("UPDATE " + ACCT + " SET balance = balance + ? WHERE worker = ?");
        PreparedStatement bal =
            c.prepareStatement("SELECT balance FROM " + ACCT + " WHERE worker = ?");
        PreparedStatement agg = c.prepareStatement(
            "SELECT count(*), coalesce(sum(seq), 0) FROM " + TABLE + " WHERE worker = ?");
        PreparedStatement one =
            c.prepareStatement("SELECT val FROM " + TABLE + " WHERE worker = ? AND seq = ?");
        PreparedStatement all = c.prepareStatement(
            "SELECT seq, val FROM " + TABLE + " WHERE worker = ? ORDER BY seq")) {
      long balance = 0;
      PreparedStatement note = null;
      for (int j = 0; j < ITERATIONS; j++) {
        ins.setInt(1, w);
        ins.setInt(2, j);
        ins.setString(3, "w" + w + "-" + j);
        check(ins.executeUpdate() == 1, "insert");

        c.setAutoCommit(false);
        upd.setLong(1, j);
        upd.setInt(2, w);
        check(upd.executeUpdate() == 1, "update");
        bal.setInt(1, w);
        long b;
        try (ResultSet rs = bal.executeQuery()) {
          check(rs.next(), "balance row");
          b = rs.getLong(1);
        }
        c.commit();
        c.setAutoCommit(true);
        balance += j;
        check(b == balance, "worker " + w + " balance " + b + " != " + balance);

        agg.setInt(1, w);
        try (ResultSet rs = agg.executeQuery()) {
          check(rs.next() && rs.getLong(1) == j + 1 && rs.getLong(2) == (long) j * (j + 1) / 2,
              "worker " + w + " agg");
        }
        one.setInt(1, w);
        one.setInt(2, j);
        try (ResultSet rs = one.executeQuery()) {
          check(rs.next() && rs.getString(1).equals("w" + w + "-" + j) && !rs.next(), "one");
        }
        if (j % 8 == w % 8) metadata(c, false);
        if (j == ITERATIONS / 3) {
          try (Statement s = c.createStatement()) {
            s.execute("DEALLOCATE ALL");  // pgJDBC sees the tag and prepares its statements again
          }
        }
        if (w == 0 && j == ITERATIONS / 2) {
          try (Statement s = c.createStatement()) {
            s.execute("ALTER TABLE " + TABLE + " ADD COLUMN note text NOT NULL DEFAULT 'noted'");
          }
          ddlDone.set(true);
          metadata(c, true);
        }
        if (ddlDone.get()) {
          if (note == null) {
            note = c.prepareStatement(
                "SELECT note, val FROM " + TABLE + " WHERE worker = ? AND seq = ?");
          }
          note.setInt(1, w);
          note.setInt(2, j);
          try (ResultSet rs = note.executeQuery()) {
            check(rs.next() && rs.getString(1).equals("noted")
                && rs.getString(2).equals("w" + w + "-" + j), "note");
          }
          afterDdlReads.incrementAndGet();
        }
      }
      all.setInt(1, w);
      try (ResultSet rs = all.executeQuery()) {
        int j = 0;
        for (; rs.next(); j++) {
          check(rs.getInt(1) == j && rs.getString(2).equals("w" + w + "-" + j), "row " + j);
        }
        check(j == ITERATIONS, "worker " + w + " has " + j + " rows");
      }
      // Worker 0 may still be short of its DDL (slow under sanitizers): the final check is
      // about what every client sees after it.
      long deadline = System.nanoTime() + 60_000_000_000L;
      while (!ddlDone.get() && System.nanoTime() < deadline) Thread.sleep(10);
      metadata(c, true);
      if (note != null) note.close();
    }
  }

  static String json(String s) {
    return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n") + "\"";
  }

  public static void main(String[] args) throws Exception {
    List<Thread> threads = new ArrayList<>();
    for (int i = 0; i < WORKERS; i++) {
      final int w = i;
      Thread t = new Thread(() -> {
        try {
          worker(w);
        } catch (Exception e) {
          String state = e instanceof SQLException ? ((SQLException) e).getSQLState() + " " : "";
          errors.add("worker " + w + ": " + state + e);
        }
      });
      threads.add(t);
      t.start();
    }
    for (Thread t : threads) t.join();
    StringBuilder out = new StringBuilder("{\"ok\": " + errors.isEmpty() + ", \"errors\": [");
    synchronized (errors) {
      for (int i = 0; i < errors.size(); i++) out.append(i > 0 ? ", " : "").append(json(errors.get(i)));
    }
    out.append("], \"stats\": {\"after_ddl_reads\": ").append(afterDdlReads.get())
        .append(", \"metadata_calls\": ").append(metadataCalls.get()).append("}}");
    System.out.println(out);
    System.exit(errors.isEmpty() ? 0 : 1);
  }
}
