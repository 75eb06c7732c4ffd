package dev.fanoni.hapi;

import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import org.springframework.beans.BeansException;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.context.EnvironmentAware;
import org.springframework.core.env.Environment;
import org.springframework.stereotype.Component;

/**
 * HAPI's batch2 maintenance pass (which moves jobs such as the reindex started by a new
 * SearchParameter from one step to the next) runs once a minute by default. On this single,
 * in-memory test node a short interval costs little and makes reindexing finish in seconds.
 * Property: {@code hapi.batch2_maintenance_interval_ms} (default 2000).
 */
@Component
public class Batch2MaintenanceTuning implements BeanPostProcessor, EnvironmentAware {

	private long myIntervalMillis = 2000;

	@Override
	public void setEnvironment(Environment env) {
		myIntervalMillis = env.getProperty("hapi.batch2_maintenance_interval_ms", Long.class, myIntervalMillis);
	}

	@Override
	public Object postProcessBeforeInitialization(Object bean, String beanName) throws BeansException {
		if (bean instanceof JobMaintenanceServiceImpl svc) {
			svc.setScheduledJobFrequencyMillis(myIntervalMillis);
		}
		return bean;
	}
}
