// A Java peer for the interop test: talks to a blobvault server the way Flink 0.10's BlobClient
// does (small unbuffered writes, no TCP_NODELAY) and deserializes error payloads with the JDK's
// ObjectInputStream, as the Java client does. Prints one line per check.
import java.io.*;
import java.net.Socket;
import java.security.MessageDigest;
import java.util.Arrays;

public class BlobProbe {
    static void writeLen(OutputStream out, int n) throws IOException {
        out.write(n & 0xff); out.write((n >> 8) & 0xff); out.write((n >> 16) & 0xff); out.write((n >> 24) & 0xff);
    }
    static int readLen(InputStream in) throws IOException {
        int n = 0;
        for (int i = 0; i < 4; i++) { int b = in.read(); if (b < 0) throw new EOFException("length"); n |= b << (8 * i); }
        return n;
    }
    static byte[] readFully(InputStream in, int n) throws IOException {
        byte[] b = new byte[n]; int off = 0;
        while (off < n) { int r = in.read(b, off, n - off); if (r < 0) throw new EOFException("body"); off += r; }
        return b;
    }
    static String hex(byte[] b) { StringBuilder s = new StringBuilder(); for (byte x : b) s.append(String.format("%02x", x)); return s.toString(); }

    public static void main(String[] args) throws Exception {
        String host = args[0]; int port = Integer.parseInt(args[1]);
        byte[] data = "hello from java".getBytes("UTF-8");
        byte[] key = MessageDigest.getInstance("SHA-1").digest(data);
        try (Socket s = new Socket(host, port)) {
            OutputStream out = s.getOutputStream(); InputStream in = s.getInputStream();
            // PUT content, written the way BlobClient.putInputStream does: piece by piece.
            out.write(0); out.write(0); writeLen(out, data.length); out.write(data, 0, data.length); writeLen(out, -1);
            if (in.read() != 0) throw new IOException("PUT failed");
            byte[] got = readFully(in, 20);
            System.out.println("put-key " + (Arrays.equals(got, key) ? "ok" : "mismatch " + hex(got)));
            // GET it back on the same connection.
            out.write(1); out.write(0); out.write(key);
            if (in.read() != 0) throw new IOException("GET failed");
            byte[] body = readFully(in, readLen(in));
            System.out.println("get " + (Arrays.equals(body, data) ? "ok" : "mismatch"));
            // GET of a missing key: an error payload the JDK must deserialize to a Throwable.
            out.write(1); out.write(0); out.write(new byte[20]);
            int status = in.read();
            byte[] payload = readFully(in, readLen(in));
            Object o = new ObjectInputStream(new ByteArrayInputStream(payload)).readObject();
            Throwable t = (Throwable) o;
            System.out.println("error status=" + status + " class=" + t.getClass().getName());
            // What Flink's BlobClient wraps it into.
            System.out.println("message Server side error: " + t.getMessage());
            System.out.println("closed " + (in.read() == -1));
        }
    }
}
