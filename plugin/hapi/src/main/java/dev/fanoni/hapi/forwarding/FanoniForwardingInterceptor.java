package dev.fanoni.hapi.forwarding;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.ConnectException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpConnectTimeoutException;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.Optional;
import org.hl7.fhir.instance.model.api.IBaseConformance;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Forwards Fanoni Scheduling's operation calls that reach HAPI FHIR to the scheduling sidecar, so
 * that {@code [hapi base]/Appointment/$find} works like {@code [sidecar base]/Appointment/$find}.
 *
 * <p>Forwarded (nothing else; every other request is left to HAPI), as {@link FanoniOperations#ALL}
 * lists them:
 *
 * <ul>
 *   <li>{@code GET|POST Appointment/$find}, {@code GET|POST Schedule/<id>/$find}
 *   <li>{@code POST Appointment/$hold}, {@code POST Appointment/$book}
 *   <li>{@code POST Appointment/<id>/$confirm}, {@code POST Appointment/<id>/$cancel},
 *       {@code POST Appointment/<id>/$reschedule}
 * </ul>
 *
 * <p>The same operations are added to HAPI's own CapabilityStatement ({@code GET [base]/metadata}),
 * each with its OperationDefinition's canonical URL, at
 * {@link Pointcut#SERVER_CAPABILITY_STATEMENT_GENERATED}, so that clients discover them where FHIR
 * clients look. A disabled interceptor (no sidecar URL) lists nothing, as it forwards nothing.
 *
 * <p>The hook runs at {@link Pointcut#SERVER_INCOMING_REQUEST_PRE_HANDLER_SELECTED}: HAPI has parsed
 * the path but not yet looked for a method that serves it. The later pointcuts
 * ({@code SERVER_INCOMING_REQUEST_POST_PROCESSED}, {@code SERVER_INCOMING_REQUEST_PRE_HANDLED}) are
 * never reached for these URLs, because HAPI itself has no {@code $find} and rejects the request
 * with "Invalid request: The FHIR endpoint on this server does not know how to handle ..." first.
 *
 * <p>The call goes to the sidecar with the same method, path (below the sidecar base URL), raw query
 * string and body, and the headers {@code Content-Type}, {@code Accept}, {@code Authorization} and
 * {@code X-Request-ID} (HAPI's request id: the caller's when it sent a usable one). The sidecar's
 * status, body and the headers {@code Content-Type}, {@code Expires}, {@code Location},
 * {@code X-Request-ID} and {@code X-Upstream-Round-Trips} are sent back; a {@code Location} on the
 * sidecar's base is moved onto HAPI's base. When the sidecar cannot be reached the answer is a FHIR
 * {@code OperationOutcome} (JSON): 503 {@code transient} when no connection could be made, 504
 * {@code timeout} when the sidecar did not answer within the request timeout, 502 {@code exception}
 * for any other transport failure.
 *
 * <p>One instance holds one {@link HttpClient}, shared by all requests; the class is thread-safe.
 *
 * <p>Configuration, for the no-argument constructor (which HAPI's JPA starter uses for classes listed
 * in {@code hapi.fhir.custom-interceptor-classes}): JVM system property, else environment variable,
 * {@value #SIDECAR_URL} (empty: the interceptor does nothing), {@value #CONNECT_TIMEOUT_SECONDS}
 * (default 5) and {@value #REQUEST_TIMEOUT_SECONDS} (default 90).
 */
@Interceptor
public class FanoniForwardingInterceptor {

	/** Setting: the sidecar's FHIR base URL, e.g. {@code http://fanoni-scheduling:8090/fhir}. */
	public static final String SIDECAR_URL = "FANONI_SIDECAR_URL";
	/** Setting: seconds to wait for a TCP connection to the sidecar. */
	public static final String CONNECT_TIMEOUT_SECONDS = "FANONI_SIDECAR_CONNECT_TIMEOUT_SECONDS";
	/** Setting: seconds to wait for the sidecar's response. */
	public static final String REQUEST_TIMEOUT_SECONDS = "FANONI_SIDECAR_REQUEST_TIMEOUT_SECONDS";

	public static final Duration DEFAULT_CONNECT_TIMEOUT = Duration.ofSeconds(5);
	/**
	 * 90 s: the sidecar bounds a booking at BOOKING_DEADLINE_SECONDS (20) + UPSTREAM_READ_TIMEOUT (30)
	 * + 10 s = 60 s, and this interceptor must never answer 504 while the sidecar may still commit.
	 */
	public static final Duration DEFAULT_REQUEST_TIMEOUT = Duration.ofSeconds(90);

	/**
	 * Sent on every forwarded call. A request that arrives with it is never forwarded again, so a
	 * sidecar URL that points back at HAPI itself cannot make a request loop.
	 */
	static final String FORWARDED_HEADER = "X-Fanoni-Forwarded";

	private static final Logger ourLog = LoggerFactory.getLogger(FanoniForwardingInterceptor.class);

	private static final List<String> FORWARDED_REQUEST_HEADERS =
			List.of("Content-Type", "Accept", "Authorization");
	private static final List<String> RELAYED_RESPONSE_HEADERS =
			List.of("Content-Type", "Expires", "Location", "X-Request-ID", "X-Upstream-Round-Trips");

	private static final String FHIR_JSON = "application/fhir+json;charset=utf-8";

	private final String mySidecarBase;
	private final Duration myRequestTimeout;
	private final HttpClient myClient;

	/**
	 * Reads {@value #SIDECAR_URL}, {@value #CONNECT_TIMEOUT_SECONDS} and {@value #REQUEST_TIMEOUT_SECONDS}
	 * from the JVM system properties or the environment. Without a sidecar URL the interceptor does
	 * nothing (every request goes to HAPI), and says so in the log.
	 */
	public FanoniForwardingInterceptor() {
		this(
				setting(SIDECAR_URL),
				durationSetting(CONNECT_TIMEOUT_SECONDS, DEFAULT_CONNECT_TIMEOUT),
				durationSetting(REQUEST_TIMEOUT_SECONDS, DEFAULT_REQUEST_TIMEOUT));
		if (!isEnabled()) {
			ourLog.warn("{} is not set: Fanoni Scheduling operations are not forwarded", SIDECAR_URL);
		}
	}

	/** Forwards to the sidecar at {@code theSidecarBaseUrl} with the default timeouts (5 s, 90 s). */
	public FanoniForwardingInterceptor(String theSidecarBaseUrl) {
		this(theSidecarBaseUrl, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT);
	}

	/**
	 * @param theSidecarBaseUrl the sidecar's FHIR base URL ({@code http(s)://host:port/path}); blank
	 *     means "forward nothing"
	 * @param theConnectTimeout how long to wait for a connection to the sidecar
	 * @param theRequestTimeout how long to wait for the sidecar's response
	 * @throws IllegalArgumentException if the URL is not an absolute http(s) URL or a timeout is not
	 *     positive
	 */
	public FanoniForwardingInterceptor(
			String theSidecarBaseUrl, Duration theConnectTimeout, Duration theRequestTimeout) {
		mySidecarBase = normaliseBaseUrl(theSidecarBaseUrl);
		requirePositive(theConnectTimeout, "connect timeout");
		requirePositive(theRequestTimeout, "request timeout");
		myRequestTimeout = theRequestTimeout;
		myClient = mySidecarBase == null
				? null
				: HttpClient.newBuilder()
						.version(HttpClient.Version.HTTP_1_1)
						.connectTimeout(theConnectTimeout)
						.followRedirects(HttpClient.Redirect.NEVER)
						.build();
		if (mySidecarBase != null) {
			ourLog.info(
					"Forwarding Fanoni Scheduling operations to {} (connect timeout {} ms, request timeout {} ms)",
					mySidecarBase,
					theConnectTimeout.toMillis(),
					theRequestTimeout.toMillis());
		}
	}

	/** An interceptor for the sidecar at {@code theSidecarBaseUrl}; empty when the URL is blank. */
	public static Optional<FanoniForwardingInterceptor> forSidecar(String theSidecarBaseUrl) {
		return forSidecar(theSidecarBaseUrl, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT);
	}

	/** As {@link #forSidecar(String)}, with explicit timeouts. */
	public static Optional<FanoniForwardingInterceptor> forSidecar(
			String theSidecarBaseUrl, Duration theConnectTimeout, Duration theRequestTimeout) {
		if (theSidecarBaseUrl == null || theSidecarBaseUrl.isBlank()) {
			return Optional.empty();
		}
		return Optional.of(new FanoniForwardingInterceptor(theSidecarBaseUrl, theConnectTimeout, theRequestTimeout));
	}

	/** Whether a sidecar URL is configured (otherwise the hook lets every request through). */
	public boolean isEnabled() {
		return mySidecarBase != null;
	}

	/** The sidecar base URL without a trailing slash, or {@code null} when disabled. */
	public String getSidecarBaseUrl() {
		return mySidecarBase;
	}

	/**
	 * Forwards the request if it is one of the scheduling operations.
	 *
	 * @return {@code true} to let HAPI handle the request, {@code false} when the response has been
	 *     written here
	 */
	@Hook(Pointcut.SERVER_INCOMING_REQUEST_PRE_HANDLER_SELECTED)
	public boolean forwardSchedulingOperation(
			RequestDetails theRequestDetails, HttpServletRequest theRequest, HttpServletResponse theResponse)
			throws IOException {
		if (myClient == null || theRequest.getHeader(FORWARDED_HEADER) != null) {
			return true;
		}
		String method = theRequest.getMethod();
		String path = operationPath(method, theRequestDetails.getRequestPath());
		if (path == null) {
			return true;
		}

		String query = theRequest.getQueryString();
		URI target = URI.create(
				mySidecarBase + "/" + path + (query == null || query.isEmpty() ? "" : "?" + encodeQuery(query)));
		HttpRequest.BodyPublisher body = "POST".equals(method)
				? HttpRequest.BodyPublishers.ofByteArray(theRequestDetails.loadRequestContents())
				: HttpRequest.BodyPublishers.noBody();
		HttpRequest.Builder request = HttpRequest.newBuilder(target)
				.timeout(myRequestTimeout)
				.method(method, body)
				.header(FORWARDED_HEADER, "true");
		for (String name : FORWARDED_REQUEST_HEADERS) {
			String value = joinedHeader(theRequest, name);
			if (value != null) {
				request.header(name, value);
			}
		}
		String requestId = theRequestDetails.getRequestId();
		if (requestId == null || requestId.isBlank()) {
			requestId = theRequest.getHeader("X-Request-ID");
		}
		if (requestId != null && !requestId.isBlank()) {
			request.header("X-Request-ID", requestId);
		}

		long started = System.nanoTime();
		HttpResponse<byte[]> response;
		try {
			response = myClient.send(request.build(), HttpResponse.BodyHandlers.ofByteArray());
		} catch (HttpConnectTimeoutException e) {
			failed(theResponse, method, path, e, 503, "transient", "The scheduling service is unreachable (connect timeout).");
			return false;
		} catch (HttpTimeoutException e) {
			String diagnostics =
					"The scheduling service did not answer within " + myRequestTimeout.toMillis() + " ms.";
			failed(theResponse, method, path, e, 504, "timeout", diagnostics);
			return false;
		} catch (ConnectException e) {
			failed(theResponse, method, path, e, 503, "transient", "The scheduling service is unreachable.");
			return false;
		} catch (IOException e) {
			failed(theResponse, method, path, e, 502, "exception", "The call to the scheduling service failed.");
			return false;
		} catch (InterruptedException e) {
			Thread.currentThread().interrupt();
			failed(theResponse, method, path, e, 503, "transient", "The scheduling service call was interrupted.");
			return false;
		}

		theResponse.setStatus(response.statusCode());
		for (String name : RELAYED_RESPONSE_HEADERS) {
			Optional<String> value = response.headers().firstValue(name);
			if (value.isPresent()) {
				String relayed = "Location".equals(name)
						? onHapiBase(value.get(), theRequestDetails.getFhirServerBase())
						: value.get();
				// setHeader: HAPI has already put its own X-Request-ID on the response.
				theResponse.setHeader(name, relayed);
			}
		}
		write(theResponse, response.body());
		ourLog.debug(
				"Forwarded {} {} -> {} in {} ms",
				method,
				path,
				response.statusCode(),
				(System.nanoTime() - started) / 1_000_000);
		return false;
	}

	/**
	 * Lists the forwarded operations in HAPI's CapabilityStatement. HAPI calls this when it builds the
	 * statement, which it then caches (60 s by default); adding is idempotent all the same.
	 */
	@Hook(Pointcut.SERVER_CAPABILITY_STATEMENT_GENERATED)
	public void listSchedulingOperations(IBaseConformance theCapabilityStatement, RequestDetails theRequestDetails) {
		if (myClient == null) {
			return;
		}
		FhirContext context = theRequestDetails.getFhirContext();
		FanoniOperations.addTo(context, theCapabilityStatement);
	}

	/**
	 * The canonical operation path ({@code Appointment/$find}, ...) when {@code theRequestPath} is one
	 * of the forwarded operations for {@code theMethod}; {@code null} otherwise. {@code theRequestPath}
	 * is HAPI's request path below its base, still percent-encoded ({@code %24find} is {@code $find}).
	 */
	static String operationPath(String theMethod, String theRequestPath) {
		if (theRequestPath == null) {
			return null;
		}
		String path = percentDecode(theRequestPath);
		if (path == null) {
			return null;
		}
		return FanoniOperations.match(theMethod, path) == null ? null : path;
	}

	/**
	 * {@code theLocation} moved from the sidecar's base onto HAPI's: the sidecar names the resource it
	 * wrote by its own base URL, the caller knows HAPI's. Any other value is returned unchanged.
	 */
	String onHapiBase(String theLocation, String theHapiBase) {
		if (theHapiBase == null || theHapiBase.isEmpty() || !theLocation.startsWith(mySidecarBase + "/")) {
			return theLocation;
		}
		String base = theHapiBase.endsWith("/") ? theHapiBase.substring(0, theHapiBase.length() - 1) : theHapiBase;
		return base + theLocation.substring(mySidecarBase.length());
	}

	/** {@code theQuery} with every character that {@link URI} refuses percent-encoded (e.g. {@code |}). */
	static String encodeQuery(String theQuery) {
		StringBuilder out = new StringBuilder(theQuery.length() + 16);
		byte[] bytes = theQuery.getBytes(StandardCharsets.UTF_8);
		for (int i = 0; i < bytes.length; i++) {
			int b = bytes[i] & 0xff;
			boolean isPercentEscape = b == '%'
					&& i + 2 < bytes.length
					&& isHex(bytes[i + 1])
					&& isHex(bytes[i + 2]);
			if (isPercentEscape || (b < 0x80 && isQueryChar((char) b))) {
				out.append((char) b);
			} else {
				out.append('%').append(Character.toUpperCase(Character.forDigit(b >> 4, 16)))
						.append(Character.toUpperCase(Character.forDigit(b & 0xf, 16)));
			}
		}
		return out.toString();
	}

	private static boolean isQueryChar(char c) {
		// RFC 3986 query: unreserved / sub-delims / ":" / "@" / "/" / "?"
		return (c >= 'a' && c <= 'z')
				|| (c >= 'A' && c <= 'Z')
				|| (c >= '0' && c <= '9')
				|| "-._~!$&'()*+,;=:@/?".indexOf(c) >= 0;
	}

	private static boolean isHex(byte b) {
		return Character.digit(b, 16) >= 0;
	}

	/** RFC 3986 percent-decoding ({@code +} stays {@code +}); {@code null} if malformed. */
	static String percentDecode(String theValue) {
		if (theValue.indexOf('%') < 0) {
			return theValue;
		}
		ByteArrayOutputStream out = new ByteArrayOutputStream(theValue.length());
		byte[] bytes = theValue.getBytes(StandardCharsets.UTF_8);
		for (int i = 0; i < bytes.length; i++) {
			if (bytes[i] == '%') {
				if (i + 2 >= bytes.length || !isHex(bytes[i + 1]) || !isHex(bytes[i + 2])) {
					return null;
				}
				out.write(Character.digit(bytes[i + 1], 16) * 16 + Character.digit(bytes[i + 2], 16));
				i += 2;
			} else {
				out.write(bytes[i]);
			}
		}
		return out.toString(StandardCharsets.UTF_8);
	}

	private static String joinedHeader(HttpServletRequest theRequest, String theName) {
		List<String> values = Collections.list(theRequest.getHeaders(theName));
		if (values.isEmpty()) {
			return null;
		}
		return String.join(", ", values);
	}

	private void failed(
			HttpServletResponse theResponse,
			String theMethod,
			String thePath,
			Exception theCause,
			int theStatus,
			String theIssueCode,
			String theDiagnostics)
			throws IOException {
		Throwable reason = theCause;
		while (reason.getMessage() == null && reason.getCause() != null) {
			reason = reason.getCause();
		}
		ourLog.warn(
				"Forwarding {} {} to {} failed ({}: {}): answering {}",
				theMethod,
				thePath,
				mySidecarBase,
				reason.getClass().getSimpleName(),
				reason.getMessage(),
				theStatus);
		theResponse.setStatus(theStatus);
		theResponse.setHeader("Content-Type", FHIR_JSON);
		write(theResponse, operationOutcome(theIssueCode, theDiagnostics).getBytes(StandardCharsets.UTF_8));
	}

	static String operationOutcome(String theIssueCode, String theDiagnostics) {
		return "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\""
				+ jsonEscape(theIssueCode)
				+ "\",\"diagnostics\":\""
				+ jsonEscape(theDiagnostics)
				+ "\"}]}";
	}

	private static String jsonEscape(String theValue) {
		StringBuilder out = new StringBuilder(theValue.length() + 8);
		for (char c : theValue.toCharArray()) {
			switch (c) {
				case '"' -> out.append("\\\"");
				case '\\' -> out.append("\\\\");
				case '\n' -> out.append("\\n");
				case '\r' -> out.append("\\r");
				case '\t' -> out.append("\\t");
				default -> {
					if (c < 0x20) {
						out.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
					} else {
						out.append(c);
					}
				}
			}
		}
		return out.toString();
	}

	private static void write(HttpServletResponse theResponse, byte[] theBody) throws IOException {
		theResponse.setContentLength(theBody.length);
		try (OutputStream out = theResponse.getOutputStream()) {
			out.write(theBody);
		}
	}

	private static String normaliseBaseUrl(String theUrl) {
		if (theUrl == null || theUrl.isBlank()) {
			return null;
		}
		String url = theUrl.trim();
		while (url.endsWith("/")) {
			url = url.substring(0, url.length() - 1);
		}
		URI uri;
		try {
			uri = URI.create(url);
		} catch (IllegalArgumentException e) {
			throw new IllegalArgumentException("Fanoni sidecar URL is not a valid URL: " + theUrl, e);
		}
		String scheme = uri.getScheme() == null ? "" : uri.getScheme().toLowerCase(Locale.ROOT);
		if (!(scheme.equals("http") || scheme.equals("https"))
				|| uri.getHost() == null
				|| uri.getRawQuery() != null
				|| uri.getRawFragment() != null) {
			throw new IllegalArgumentException(
					"Fanoni sidecar URL must be an absolute http(s) base URL such as http://sidecar:8090/fhir, not "
							+ theUrl);
		}
		return url;
	}

	private static void requirePositive(Duration theValue, String theName) {
		if (theValue == null || theValue.isZero() || theValue.isNegative()) {
			throw new IllegalArgumentException("Fanoni sidecar " + theName + " must be positive, not " + theValue);
		}
	}

	private static String setting(String theName) {
		String value = System.getProperty(theName);
		if (value == null || value.isBlank()) {
			value = System.getenv(theName);
		}
		return value == null ? "" : value.trim();
	}

	private static Duration durationSetting(String theName, Duration theDefault) {
		String value = setting(theName);
		if (value.isEmpty()) {
			return theDefault;
		}
		try {
			return Duration.ofMillis(Math.round(Double.parseDouble(value) * 1000));
		} catch (NumberFormatException e) {
			throw new IllegalArgumentException(theName + " must be a number of seconds, not " + value, e);
		}
	}
}
