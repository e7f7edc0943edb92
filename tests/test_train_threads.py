import torch

from flatlib.train import TrainConfig, train

# Wide enough and small-batched enough that a 2-thread matrix product sums in another order
# than a 1-thread one on a CPU (checked: without the single-thread rule the weights differ).
CONFIG = TrainConfig(dataset="mnist", n=512, widths=(256, 256), batch_size=64, epochs=2, target_train_acc=None)


def test_training_gives_bit_identical_weights_whatever_the_thread_count():
    before = torch.get_num_threads()
    try:
        weights = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            weights[threads] = train(CONFIG).model.state_dict()
            assert torch.get_num_threads() == threads  # restored after training
    finally:
        torch.set_num_threads(before)
    for name, value in weights[1].items():
        assert torch.equal(value, weights[2][name]), name
