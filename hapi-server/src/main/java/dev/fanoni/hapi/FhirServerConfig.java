package dev.fanoni.hapi;

import ca.uhn.fhir.batch2.jobs.bulkmodify.reindex.ReindexProvider;
import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import dev.fanoni.hapi.forwarding.FanoniForwardingInterceptor;
import dev.fanoni.hapi.guard.FanoniGuardInterceptor;
import jakarta.persistence.EntityManagerFactory;
import java.time.Duration;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.springframework.beans.factory.ObjectProvider;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.core.env.Environment;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

/**
 * Wires HAPI FHIR's JPA R4 server: the HAPI configurations ({@link JpaR4Config}, {@link HapiJpaConfig})
 * provide the DAOs, search, batch2 and scheduler beans; this class provides what HAPI expects the
 * host application to supply (storage settings, data source, entity manager factory, transaction
 * manager, the RestfulServer servlet). The database is in-memory H2 unless a JDBC URL names another
 * (PostgreSQL: {@link Database}).
 *
 * <p>Every setting below can be overridden as a Spring property: {@code --hapi.x=...} on the command
 * line, {@code -Dhapi.x=...} as a JVM system property, or the environment variable {@code HAPI_X}.
 */
@Configuration
@EnableTransactionManagement
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	// In-memory message channels (batch2 and subscriptions run on them; this is a single node).
	SubscriptionChannelConfig.class,
	// Subscriptions: the submitter matches each write against the active Subscriptions, the processor
	// activates Subscriptions and delivers rest-hook notifications. Both are inert unless
	// subscriptionSettings() names a channel type (hapi.subscriptions_enabled).
	SubscriptionSubmitterConfig.class,
	SubscriptionProcessorConfig.class,
	ThreadPoolFactoryConfig.class
})
public class FhirServerConfig {

	private static final org.slf4j.Logger ourLog = org.slf4j.LoggerFactory.getLogger(FhirServerConfig.class);

	@Bean
	public JpaStorageSettings storageSettings(Environment env) {
		JpaStorageSettings s = new JpaStorageSettings();
		// Client-assigned ids (PUT Slot/abc). ANY also allows purely numeric ids; server ids are then UUIDs.
		JpaStorageSettings.ClientIdStrategyEnum clientIds = JpaStorageSettings.ClientIdStrategyEnum.valueOf(
				env.getProperty("hapi.client_id_strategy", "ANY"));
		s.setResourceClientIdStrategy(clientIds);
		String serverIds = env.getProperty(
				"hapi.server_id_strategy",
				clientIds == JpaStorageSettings.ClientIdStrategyEnum.ANY ? "UUID" : "SEQUENTIAL_NUMERIC");
		s.setResourceServerIdStrategy(JpaStorageSettings.IdStrategyEnum.valueOf(serverIds));

		s.setReuseCachedSearchResultsForMillis(
				env.getProperty("hapi.reuse_cached_search_results_millis", Long.class, 0L));
		s.setAllowMultipleDelete(env.getProperty("hapi.allow_multiple_delete", Boolean.class, true));
		s.setDeleteExpungeEnabled(env.getProperty("hapi.delete_expunge_enabled", Boolean.class, false));
		s.setExpungeEnabled(env.getProperty("hapi.expunge_enabled", Boolean.class, true));
		s.setAllowExternalReferences(env.getProperty("hapi.allow_external_references", Boolean.class, true));
		s.setAutoCreatePlaceholderReferenceTargets(
				env.getProperty("hapi.auto_create_placeholder_reference_targets", Boolean.class, false));
		s.setEnforceReferentialIntegrityOnWrite(
				env.getProperty("hapi.enforce_referential_integrity_on_write", Boolean.class, true));
		s.setEnforceReferentialIntegrityOnDelete(
				env.getProperty("hapi.enforce_referential_integrity_on_delete", Boolean.class, true));
		s.setFetchSizeDefaultMaximum(env.getProperty("hapi.max_page_size", Integer.class, 1000));
		// Batch2 jobs (e.g. the reindex started when a SearchParameter is created) move from step to
		// step at once instead of waiting for the next maintenance pass.
		s.setJobFastTrackingEnabled(env.getProperty("hapi.job_fast_tracking", Boolean.class, true));
		// Nothing here needs terminology pre-expansion or Hibernate Search.
		s.setPreExpandValueSets(false);
		s.setEnableTaskPreExpandValueSets(false);
		s.setHibernateSearchIndexSearchParams(false);
		s.setAdvancedHSearchIndexing(false);

		ourLog.info(
				"HAPI storage: clientIds={} serverIds={} reuseCachedSearchResultsMillis={} maxPageSize={}",
				clientIds,
				serverIds,
				s.getReuseCachedSearchResultsForMillis(),
				s.getFetchSizeDefaultMaximum());
		return s;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings(Environment env) {
		SubscriptionSettings s = new SubscriptionSettings();
		// REST-hook Subscriptions (R4 Subscription, channel.type = rest-hook) become active when created
		// and are delivered; without a supported type HAPI stores Subscriptions but never activates them.
		if (env.getProperty("hapi.subscriptions_enabled", Boolean.class, true)) {
			s.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
		}
		// HAPI 8 stores each change in a table and a scheduled job hands the stored changes to the
		// matcher, every 5 s by default: a notification then comes 0-5 s after the write. A short pass on
		// this single in-memory node makes it well under a second (the JPA starter's
		// hapi.fhir.subscription.polling_interval_ms sets the same value).
		s.setSubscriptionIntervalInMs(env.getProperty("hapi.subscription_polling_interval_ms", Long.class, 200L));
		// A new Subscription is activated (requested -> active) by the same pass. Not
		// setSubscriptionChangeQueuedImmediately(true): HAPI 8.8 then hands the Subscription over
		// before its transaction commits, the activation fails ("HAPI-2001 ... is not known", logged at
		// ERROR) and succeeds only on a retry about a second later.
		if (!s.getSupportedSubscriptionTypes().isEmpty()) {
			ourLog.info("REST-hook subscriptions enabled (polling interval {} ms)", s.getSubscriptionIntervalInMs());
		}
		return s;
	}

	/** The subscription processor needs an email sender even when email Subscriptions are off; none here. */
	@Bean
	public IEmailSender emailSender() {
		return theDetails -> ourLog.warn("Email subscriptions are not supported by this server; not sent");
	}

	/**
	 * The database: in-memory H2 unless {@code spring.datasource.url} (the JPA starter's name, also
	 * {@code SPRING_DATASOURCE_URL}) or {@code hapi.datasource.url} names another, e.g.
	 * {@code jdbc:postgresql://127.0.0.1:5432/hapi}. The driver and the Hibernate dialect follow from the URL
	 * unless {@code spring.datasource.driver-class-name} / {@code spring.jpa.properties.hibernate.dialect}
	 * say otherwise.
	 */
	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource(Environment env) {
		Database db = Database.of(env);
		BasicDataSource ds = new BasicDataSource();
		ds.setDriverClassName(db.driverClassName);
		// H2 default: a named in-memory database kept for the JVM's lifetime, so every start is a clean server.
		ds.setUrl(db.url);
		ds.setUsername(db.username);
		ds.setPassword(db.password);
		ds.setMaxTotal(env.getProperty("hapi.datasource.max_total", Integer.class, 20));
		ourLog.info("HAPI database: {} (driver {}, dialect {})", db.safeUrl(), db.driverClassName, db.dialect);
		return ds;
	}

	/** The datasource settings as given, with what follows from the JDBC URL filled in. */
	static final class Database {
		static final String H2_URL = "jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1";

		final String url;
		final String driverClassName;
		final String dialect;
		final String username;
		final String password;

		private Database(String url, String driverClassName, String dialect, String username, String password) {
			this.url = url;
			this.driverClassName = driverClassName;
			this.dialect = dialect;
			this.username = username;
			this.password = password;
		}

		static Database of(Environment env) {
			String url = setting(env, "spring.datasource.url", "hapi.datasource.url", String.class, H2_URL);
			boolean h2 = url.startsWith("jdbc:h2:");
			boolean postgres = url.startsWith("jdbc:postgresql:");
			String driver = env.getProperty(
					"spring.datasource.driver-class-name", h2 ? "org.h2.Driver" : postgres ? "org.postgresql.Driver" : "");
			String dialect = setting(
					env,
					"spring.jpa.properties.hibernate.dialect",
					"hapi.hibernate.dialect",
					String.class,
					h2 ? HapiFhirH2Dialect.class.getName() : postgres ? HapiFhirPostgresDialect.class.getName() : "");
			if (driver.isEmpty() || dialect.isEmpty()) {
				throw new IllegalStateException("Unknown database URL " + url + ": this server knows jdbc:h2: and"
						+ " jdbc:postgresql:; for another, set spring.datasource.driver-class-name and"
						+ " spring.jpa.properties.hibernate.dialect (and put its driver on the class path)");
			}
			String username = setting(env, "spring.datasource.username", "hapi.datasource.username", String.class, h2 ? "sa" : "");
			String password = setting(env, "spring.datasource.password", "hapi.datasource.password", String.class, "");
			return new Database(url, driver, dialect, username.isEmpty() ? null : username, password);
		}

		/** The URL without its query (which may carry a password). */
		String safeUrl() {
			int query = url.indexOf('?');
			return query < 0 ? url : url.substring(0, query) + "?...";
		}
	}

	/** {@code springName} (the JPA starter's property) if set, else {@code hapiName}, else the default. */
	private static <T> T setting(Environment env, String springName, String hapiName, Class<T> type, T defaultValue) {
		T value = env.getProperty(springName, type);
		return value != null ? value : env.getProperty(hapiName, type, defaultValue);
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			DataSource dataSource,
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			Environment env) {
		Database db = Database.of(env);
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setDataSource(dataSource);

		Properties jpa = new Properties();
		jpa.put("hibernate.dialect", db.dialect);
		jpa.put("hibernate.hbm2ddl.auto", env.getProperty("hapi.hibernate.hbm2ddl_auto", "update"));
		jpa.put("hibernate.format_sql", "false");
		jpa.put("hibernate.show_sql", "false");
		jpa.put("hibernate.jdbc.batch_size", "20");
		jpa.put("hibernate.cache.use_query_cache", "false");
		jpa.put("hibernate.cache.use_second_level_cache", "false");
		jpa.put("hibernate.cache.use_structured_entries", "false");
		jpa.put("hibernate.cache.use_minimal_puts", "false");
		jpa.put("hibernate.search.enabled", "false");
		emf.setJpaProperties(jpa);
		return emf;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviders,
			IJpaSystemProvider systemProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			ObjectProvider<ReindexProvider> reindexProvider,
			Environment env) {
		FhirContext ctx = systemDao.getContext();
		ctx.setNarrativeGenerator(new NullNarrativeGenerator());

		RestfulServer server = new RestfulServer(ctx);
		server.registerProviders(resourceProviders.createProviders());
		server.registerProvider(systemProvider);
		// $reindex: the sidecar's registration asks for it after installing the Slot `end`
		// SearchParameter, so Slots stored before it are found by `end=` searches too.
		reindexProvider.ifAvailable(server::registerProvider);
		server.setServerConformanceProvider(new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport));

		pagingProvider.setDefaultPageSize(env.getProperty("hapi.default_page_size", Integer.class, 20));
		pagingProvider.setMaximumPageSize(env.getProperty("hapi.max_page_size", Integer.class, 1000));
		server.setPagingProvider(pagingProvider);

		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(false);

		LoggingInterceptor access = new LoggingInterceptor();
		access.setLoggerName("fhir.access");
		access.setMessageFormat("${requestVerb} ${requestUrl} ${requestParameters} -> ${processingTimeMillis}ms");
		access.setErrorMessageFormat("ERROR ${requestVerb} ${requestUrl} ${requestParameters} -> ${exceptionMessage}");
		access.setLogExceptions(true);
		server.registerInterceptor(access);

		// Fanoni Scheduling operations ($find, $hold, $book, $confirm, $cancel) forwarded to the sidecar
		// when hapi.fanoni_sidecar_url (HAPI_FANONI_SIDECAR_URL) is set; not registered otherwise.
		// Registered before the authorization interceptor: forwarded calls never reach it (see
		// plugin/hapi/README.md), the sidecar passes the caller's Authorization on to this server.
		FanoniForwardingInterceptor.forSidecar(
						env.getProperty("hapi.fanoni_sidecar_url", ""),
						seconds(env, "hapi.fanoni_sidecar_connect_timeout_seconds", 5),
						seconds(env, "hapi.fanoni_sidecar_request_timeout_seconds", 90))
				.ifPresent(server::registerInterceptor);

		// The guard: busy Slots, locks and booking markers are written only by the sidecar, recognised
		// by X-Fanoni-Service-Key = hapi.fanoni_guard_key (empty: nobody; the guard fails closed).
		if (env.getProperty("hapi.fanoni_guard_enabled", Boolean.class, true)) {
			server.registerInterceptor(
					FanoniGuardInterceptor.withServiceKey(env.getProperty("hapi.fanoni_guard_key", "")));
		}

		// Fixed test bearer tokens (test server only): see FanoniTestAuthorizationInterceptor.
		if (env.getProperty("hapi.fanoni_test_authorization", Boolean.class, false)) {
			server.registerInterceptor(new FanoniTestAuthorizationInterceptor());
			ourLog.warn("Test authorization on: fixed bearer tokens (test-sidecar, test-front-desk, test-patient.<id>)"
					+ " are accepted; never use this server outside tests");
		}
		return server;
	}

	private static Duration seconds(Environment env, String name, double defaultSeconds) {
		return Duration.ofMillis(Math.round(env.getProperty(name, Double.class, defaultSeconds) * 1000));
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
		ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(server, "/fhir/*");
		reg.setName("fhir");
		reg.setLoadOnStartup(1);
		return reg;
	}
}
