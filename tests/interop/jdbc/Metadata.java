// What DBeaver and other JDBC tools do on connect, with pgjdbc (Debian's
// libpostgresql-jdbc-java): DatabaseMetaData getSchemas, getTables and getColumns, then a
// prepared query with a parameter. Run as a single-file program:
//   java -cp /usr/share/java/postgresql.jar Metadata.java JDBC_URL USER
// with the password in the environment variable MEDLAKE_PASSWORD. Prints one line per fact.
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Properties;

public class Metadata {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", System.getenv("MEDLAKE_PASSWORD"));
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData meta = conn.getMetaData();
            System.out.println("product " + meta.getDatabaseProductName() + " " + meta.getDatabaseProductVersion());
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) {
                    System.out.println("schema " + rs.getString("TABLE_SCHEM"));
                }
            }
            try (ResultSet rs = meta.getTables(null, null, "%", new String[] {"TABLE", "VIEW", "MATERIALIZED VIEW"})) {
                while (rs.next()) {
                    System.out.println("table " + rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + " " + rs.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rs = meta.getColumns(null, "bronze", "readings", "%")) {
                while (rs.next()) {
                    System.out.println("column " + rs.getString("COLUMN_NAME") + " " + rs.getString("TYPE_NAME")
                        + " " + rs.getInt("DATA_TYPE") + " nullable=" + rs.getString("IS_NULLABLE")
                        + " position=" + rs.getInt("ORDINAL_POSITION"));
                }
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT device_id, count(*) AS n, max(ts) AS last FROM bronze.readings WHERE value > ? GROUP BY device_id ORDER BY device_id")) {
                ps.setDouble(1, 70.0);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        System.out.println("row " + rs.getString(1) + " " + rs.getLong(2) + " " + rs.getTimestamp(3));
                    }
                }
            }
        }
    }
}
