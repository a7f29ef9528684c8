"""Range estimators over calibration samples, registered by name (RANGE_METRICS): how per-sample ranges [S, ...]
become the range a static quantizer is calibrated to."""
from rptq.base import Registry

RANGE_METRICS = Registry("range metric")


@RANGE_METRICS.register("minmax")
class MinMax:
    """The extreme over all samples."""

    def reduce(self, values, largest):
        return values.amax(0) if largest else values.amin(0)


@RANGE_METRICS.register("ema_minmax")
class EMAMinMax:
    """The reference's default: the first sample sets the range, each further one moves it by 1 - decay."""
    decay = 0.99

    def reduce(self, values, largest):
        out = values[0].clone()
        for v in values[1:]:
            out.mul_(self.decay).add_(v, alpha=1 - self.decay)
        return out


def reduce_samples(values, metric, largest):
    """[S, ...] per-sample minima (largest=False) or maxima -> [...]."""
    return RANGE_METRICS[metric].reduce(values, largest)
